"""A plugin module that cannot be imported: `adbench list` must show its error, and every other
method must still work."""
raise ImportError("this plugin needs a package that is not installed (on purpose)")
