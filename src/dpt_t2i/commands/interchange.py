"""Shim until cli.py registers `export_lora` and `import_official` itself."""
from . import export_lora, import_official


def register(sub) -> None:
    export_lora.register(sub)
    import_official.register(sub)
