"""Video data: decoding and sampling (PyAV), augmentation, sources, Grain pipelines, tools.

Modules, one job each:
  video.py        open a video or image with PyAV, decode only the frames a clip needs
  sampling.py     which frames a clip uses (training, uniform, multi-clip)
  transforms.py   crop/flip geometry on uint8, normalisation on device
  clips.py        records -> uint8 clips (training and evaluation)
  manifest.py     read and write manifests (CSV or JSONL) and scan folders
  sources.py      record sources: manifest, TFDS ArrayRecord, images, mixture
  quarantine.py   bad-file accounting: counts per reason, log once, quarantine list
  pipeline.py     the Grain training pipeline and global batches
  evaluation.py   deterministic evaluation reading (uniform, multi-clip, padded batches)
  tfds_builder.py TF-free TFDS builder (file bytes in a Tensor feature)
  encode.py       MP4 writing (libx264)
  process_pool.py ordered map over worker processes
  synthetic.py    the moving-shapes video set
  prepare.py      re-encode a collection to a fixed short side and short GOP
  cli.py          `twlv data synth | build | prepare`
See docs/data.md.
"""
