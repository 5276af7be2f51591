"""Weights in and out of our models, by name-mapping tables (docs/export.md).

    table.py           rules (ours <-> external keys, a transform each way), strict import
    encoder_tables.py  our encoder <-> VideoMAEModel / VJEPA2Model keys, <-> PyTorch (timm) names
    videomae.py        VideoMAE: what it can express, its config, key renames
    vjepa2.py          V-JEPA 2 (Hugging Face): its config, keys, what is ignored
    original.py        original V-JEPA and UMT PyTorch checkpoints, by key map
    hf_clip.py         Hugging Face CLIP vision tower <-> the image teacher
    hf.py, remote/     the Hugging Face folders (VideoMAEModel or remote code), flat files
    parity.py          ours vs the exported model on the same clips
    student.py         the student of a checkpoint as arrays; writing an imported one
    export_cli.py, import_cli.py   `twlv export`, `twlv import`
"""
