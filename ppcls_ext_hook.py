"""Post-import hooks that let PaddleClas's own tools use ppcls_ext with no user code.

Installed beside the `ppcls_ext` package (not inside it, so that loading it imports neither Paddle nor
ppcls_ext) and loaded at interpreter start-up by `ppcls_ext_hook.pth`, which calls `autoload()`: the
first import of PaddleClas (`ppcls` from a source checkout, `paddleclas` from the wheel) then imports
`ppcls_ext` first - so that its CPU settings apply before PaddleClas loads Paddle - and ppcls_ext
registers its models and schedules into PaddleClas's modules through `when_imported`.

`PPCLS_EXT_AUTOLOAD=0` turns the automatic import off (an explicit `import ppcls_ext` still registers).
Editable installs do not install `.pth` files: `python -m ppcls_ext_hook install` writes it.
"""
import os
import sys

SWITCH = "PPCLS_EXT_AUTOLOAD"
#: the top-level packages of PaddleClas: a source checkout, the wheel
PADDLECLAS_PACKAGES = ("ppcls", "paddleclas")
PTH_NAME = "ppcls_ext_hook.pth"
#: one line: importing the hook must never fail the interpreter's start (e.g. after an uninstall)
PTH_LINE = 'import os; exec("try: from ppcls_ext_hook import autoload\\nexcept ImportError: autoload = None\\nif autoload: autoload()")\n'

# module name -> callables run with the module each time it has executed
_after_import = {}
# module name -> callables run once, just before the module is first searched for
_before_import = {}


def enabled(environ=None):
    """False when the environment turns the automatic import off (PPCLS_EXT_AUTOLOAD=0/false/off/no)."""
    value = (os.environ if environ is None else environ).get(SWITCH, "1")
    return value.strip().lower() not in ("0", "false", "off", "no")


class _CallbackLoader:
    """Runs the real loader, then the module's post-import callbacks; every other attribute is the real
    loader's (resource readers, get_source, ...)."""

    def __init__(self, loader, name):
        self._loader, self._name = loader, name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_after_import(self._name, module)

    def __getattr__(self, attribute):
        return getattr(self._loader, attribute)


class PostImportFinder:
    """A meta-path finder that finds nothing itself: it runs pre-import callbacks, and for the watched
    modules asks the other finders for the spec and wraps its loader. A name being resolved is not
    resolved again re-entrantly, so finders that also consult the others (like this one) cannot recurse."""

    ppcls_ext_hook = True  # marks instances, also of a reloaded copy of this module

    def __init__(self):
        self._resolving = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _before_import:
            for callback in _before_import.pop(fullname):
                callback()
        if fullname not in _after_import or fullname in self._resolving:
            return None
        self._resolving.add(fullname)
        try:
            spec = _find_with_others(fullname, path, target)
        finally:
            self._resolving.discard(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _CallbackLoader(spec.loader, fullname)
        return spec

    def invalidate_caches(self):
        pass


def _find_with_others(fullname, path, target):
    for finder in list(sys.meta_path):
        if getattr(finder, "ppcls_ext_hook", False) or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(fullname, path, target)
        if spec is not None:
            return spec
    return None


def _run_after_import(name, module):
    for callback in list(_after_import.get(name, ())):
        callback(module)


def _ensure_finder():
    if not any(getattr(finder, "ppcls_ext_hook", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, PostImportFinder())


def when_imported(name, callback):
    """Call `callback(module)` once module `name` has executed: now if it is imported already, and again
    whenever it is (re)imported later. Registering the same callback twice has no further effect."""
    callbacks = _after_import.setdefault(name, [])
    if callback not in callbacks:
        callbacks.append(callback)
    _ensure_finder()
    if name in sys.modules:
        callback(sys.modules[name])


def _import_ppcls_ext():
    """Import ppcls_ext (it registers itself). A broken installation must not break PaddleClas for its
    own models: warn, naming the switch, and go on."""
    for package in PADDLECLAS_PACKAGES:
        _before_import.pop(package, None)
    if "ppcls_ext" in sys.modules:
        return
    try:
        import ppcls_ext  # noqa: F401
    except Exception as error:  # noqa: BLE001 - reported, PaddleClas goes on without our models
        import warnings

        warnings.warn(f"ppcls_ext_hook: could not import ppcls_ext ({type(error).__name__}: {error}); PaddleClas "
                      f"runs without its models. Set {SWITCH}=0 to stop this attempt.", RuntimeWarning, stacklevel=2)


def autoload():
    """Import ppcls_ext just before PaddleClas is first imported (what `ppcls_ext_hook.pth` runs at start-up).
    Idempotent; does nothing when the environment switch is off."""
    if not enabled():
        return
    if any(package in sys.modules for package in PADDLECLAS_PACKAGES):
        _import_ppcls_ext()
        return
    for package in PADDLECLAS_PACKAGES:
        callbacks = _before_import.setdefault(package, [])
        if _import_ppcls_ext not in callbacks:
            callbacks.append(_import_ppcls_ext)
    _ensure_finder()


def pth_path():
    """Where `install` writes the start-up file: this environment's site-packages."""
    import sysconfig

    return os.path.join(sysconfig.get_path("purelib"), PTH_NAME)


def main(argv=None):
    """python -m ppcls_ext_hook install|uninstall|status: manage the start-up file (for editable installs)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("install", "uninstall", "status"):
        print("usage: python -m ppcls_ext_hook install|uninstall|status", file=sys.stderr)
        return 2
    path = pth_path()
    if argv[0] == "install":
        with open(path, "w", encoding="utf-8") as f:
            f.write(PTH_LINE)
        print(f"wrote {path}")
    elif argv[0] == "uninstall":
        if os.path.exists(path):
            os.remove(path)
        print(f"removed {path}")
    else:
        state = "present" if os.path.exists(path) else "absent"
        print(f"{path}: {state}; automatic import {'on' if enabled() else f'off ({SWITCH})'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
