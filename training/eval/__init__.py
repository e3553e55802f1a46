"""The paper's transfer protocols: action recognition, retrieval, audio classification and
robust fingerprinting, on features from a pretrained (or randomly initialised) AVModel.

See docs/eval.md. Pure tensor code lives in `linear`, `metrics`; Ray Data feature extraction in
`features`; decoding/caching of datasets in `cache`; the protocols in `protocols`.
"""
