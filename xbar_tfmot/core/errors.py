"""The one base class of the errors xbar_tfmot raises on bad input."""


class XbarError(Exception):
  """Base of `ConfigError`, `MappingError` and `ExportError`.

  Each subclass also derives from the built-in type it has always been (`ValueError`,
  `RuntimeError`), so existing `except ValueError` code keeps working.
  """
