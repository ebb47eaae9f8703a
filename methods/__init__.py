"""Built-in anomaly detection methods, installed as ``adbench.methods``.

Each module registers its detector(s) with ``@register_method``; the registry imports every
module here on first use, so a new method is one new file.
"""
