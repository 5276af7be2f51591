"""Video data: decoding and sampling (PyAV), augmentation, sources, Grain pipelines, tools.

Modules, one job each:
  video.py        open a video or image with PyAV, decode only the frames a clip needs
  sampling.py     which timestamps a clip uses (training, uniform, multi-clip)
  transforms.py   crop/flip geometry on uint8, normalisation on device
  manifest.py     read and write manifests (CSV or JSONL) and scan folders
  sources.py      record sources: manifest, TFDS ArrayRecord, images, mixture
  quarantine.py   bad-file accounting: counts per reason, log once, quarantine list
  pipeline.py     Grain training pipeline, global batches, evaluation readers
  tfds_builder.py TF-free TFDS builder (MP4 bytes in a Tensor feature)
  synthetic.py    the moving-shapes video set
  prepare.py      re-encode a collection to a fixed short side and short GOP
  cli.py          `twlv data synth | build | prepare`
"""
