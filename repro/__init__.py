"""repro: reproducible training-data influence (Turn-over Dropout, TracIn, TracIn-WE, FastIF).

Main entry points:

* :func:`repro.data.load` -- datasets by name (embedded offline subsets or the real hub loaders)
* :func:`repro.models.build_model` -- the BERT-family text classifier and the small-image VGG
* :class:`repro.train.Trainer` -- training with safetensors checkpoints and learning-rate records
* :mod:`repro.results` -- metrics/tables/figures written atomically with provenance
"""
__version__ = "0.1.0"
