"""Command-line conventions of ``fire-reg``, and flags made from the settings objects.

* :class:`Parser`: argparse with every default shown in ``--help`` (:class:`HelpFormatter`)
  and parser errors in one line on standard error, exit status 2.
* :class:`ConfigFlags`: the flags of chosen fields of a :class:`fire_reg.config.Config` class.
  Name (``batch_size`` -> ``--batch-size``, :func:`flag_name`), help, default and choices come
  from the field (:func:`fire_reg.config.setting`); :meth:`ConfigFlags.config` builds the
  settings back, and a value the settings refuse (a FieldError) becomes an InputError naming
  its flag through the same :func:`flag_name`.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from fire_reg.config import Config, FieldError, choices_of
from fire_reg.io.errors import InputError


def flag_name(field: str) -> str:
    """The command-line flag of a settings field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default after its help, unless the help already says it or there is
    none to show (None, off)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default:" in text or default is None or default is False
                or default is argparse.SUPPRESS
                or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with fire-reg's conventions: defaults in ``--help``, and a
    parser error in one line (``fire-reg register: error: ...``) with exit status 2. Its
    subcommand parsers are Parsers too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        """One line on standard error (argparse would print the usage first), exit status 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see {self.prog} --help)\n")


class ConfigFlags:
    """Flags for the fields ``names`` of the settings class ``cls``.

    Each field must be declared with :func:`fire_reg.config.setting` (its help) and hold a
    whole number, a number, a text (with ``choices``: argparse refuses others) or true/false
    (``--name`` / ``--no-name``). ``fallback``: when the settings may come from elsewhere too
    (a config file), a flag left out keeps that value (the flag's own default is None) and
    its help says so (e.g. ``"or what --config says"``); without it, the flags' defaults
    are the fields' defaults.
    """

    def __init__(self, cls: type[Config], names, fallback: str | None = None):
        self.cls, self.names, self.fallback = cls, tuple(names), fallback
        fields = {field.name: field for field in dataclasses.fields(cls)}
        self.fields = [fields[name] for name in self.names]
        missing = [field.name for field in self.fields if "help" not in field.metadata]
        if missing:
            raise TypeError(f"{cls.__name__} fields {missing} have no help: declare them with "
                            "fire_reg.config.setting")
        self.types = typing.get_type_hints(cls)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add the flags to ``parser`` (choices are read now: models registered so far)."""
        for field in self.fields:
            kind = _plain_type(self.types[field.name])
            options = {"help": self._help(field),
                       "default": None if self.fallback else field.default}
            if kind is bool:
                options["action"] = argparse.BooleanOptionalAction
            else:
                options["type"] = kind
                options["choices"] = choices_of(self.cls, field.name)
            parser.add_argument(flag_name(field.name), **options)

    def _help(self, field) -> str:
        text = field.metadata["help"].replace("%", "%%")
        if self.fallback is None:
            return text  # HelpFormatter adds the default
        if field.default is not None and "default:" not in text:
            return f"{text} (default: {field.default}; {self.fallback})"
        return f"{text} ({self.fallback})"

    def config(self, args: argparse.Namespace, base: Config | None = None):
        """The settings from parsed ``args``: ``base`` (default: the class's defaults) with
        every flag given; InputError naming the flag when the settings refuse a value."""
        values = {name: getattr(args, name) for name in self.names
                  if getattr(args, name) is not None}
        try:
            return (dataclasses.replace(base, **values) if base is not None
                    else self.cls(**values))
        except FieldError as error:
            raise self.error(error) from None

    def error(self, error: FieldError) -> InputError:
        """A FieldError of these settings as an InputError naming its flag (or, for a field
        that has none, the setting)."""
        name = error.field.split(".")[0]
        where = flag_name(name) if name in self.names else f"{self.cls.__name__}.{error.field}"
        return InputError(where, error.problem)


def _plain_type(hint) -> type:
    """int for ``int`` or ``int | None`` (the type a flag parses)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return hint
