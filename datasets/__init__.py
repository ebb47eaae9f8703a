"""Built-in dataset adapters, installed as ``adbench.datasets``.

Each module registers its adapter with ``@register_dataset``; the registry imports every module
here on first use, so a new adapter is one new file.
"""
