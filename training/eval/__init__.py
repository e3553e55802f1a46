"""The paper's transfer protocols: action recognition, retrieval, audio classification and
robust fingerprinting, on features of a pretrained (or randomly initialised) AVModel.

Modules (see docs/eval.md):
- `model_io`: load a checkpoint (or `random`); `clips`: deterministic evaluation clips;
- `cache`: decode a dataset through the ingest job into cached shards;
- `features`: Ray Data feature extraction (clip tasks -> encoder actors);
- `linear`, `metrics`: logistic-regression probe, R@k and instance retrieval (pure torch);
- `controls`: what a probe gets from one still frame or the sound level (PyAV, scikit-learn);
- `protocols` (action linear, retrieval, audio), `finetune`, `fingerprint`: the protocols;
- `audio_io`: wav decoding. Evaluation runs are logged by `training.tracking.eval_log`.
Dataset adapters and distortions live in `pipelines.datasets.adapters` and `pipelines.datasets.distortions`.
"""
