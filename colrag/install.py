"""`colrag models install`: download the two checkpoints and export them to bundles.

    checkpoint (Hugging Face Hub, pinned revision) ──snapshot_download──► HF cache
        ──sha256 of LFS blobs checked──► export_retriever / export_generator ──► <models>/retriever, <models>/generator

Downloads go through huggingface_hub into its own cache (HF_HOME / HF_HUB_CACHE), so an
interrupted install resumes where it stopped, a second install re-uses the files, and
`HF_HUB_OFFLINE=1` installs from the cache alone. Only the files the exporters read are
fetched (colrag.hub: download, ALLOW_PATTERNS). The exporters record the size and sha256 of every bundle file,
and the source repository and commit, in the bundle's manifest.

Before anything is downloaded, free disk and total memory are checked against the
estimates below; `force=True` skips that refusal.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, ColragError, InputError
from .export.quantize import DEFAULT_QUANTIZE, QUANT_SCHEMES
from .hub import _first_line, _require_hub, download, hub_cache_dir, hub_offline
from .vlm.bundle import load_manifest

PARTS = ("retriever", "generator")
QUANTIZE_CHOICES = ("none", *QUANT_SCHEMES)

# Files of a checkpoint repository the exporters need: configs, weights, tokenizer, chat template.

# Environment overrides of the resource estimates (bytes), for unusual setups and tests.
MIN_FREE_ENV = "COLRAG_INSTALL_MIN_FREE_BYTES"
MIN_RAM_ENV = "COLRAG_INSTALL_MIN_RAM_BYTES"

GB = 1_000_000_000


@dataclass(frozen=True)
class ModelSpec:
    """One checkpoint colrag installs, and what installing it costs."""

    part: str  # "retriever" | "generator": the bundle folder name under the models dir
    repo_id: str
    revision: str
    download_bytes: int  # the checkpoint files matched by ALLOW_PATTERNS (bf16 safetensors + tokenizer)
    bundle_bytes: int  # the exported fp32 bundle; a quantized export writes it first, then the smaller graphs


# Pinned revisions. "main" is a placeholder: the commit shas of the two repositories could
# not be looked up where this was written (no model hub reachable). Pin each to a commit
# sha (40 hex digits) so that every install exports the same weights; huggingface_hub then
# skips the revision lookup, and the manifest's `revision` shows the sha either way.
RETRIEVER = ModelSpec(
    part="retriever",
    repo_id="vidore/colqwen2-v1.0-hf",
    revision="main",  # TODO: pin a commit sha
    download_bytes=int(4.5 * GB),  # 2.2 B parameters in bf16
    bundle_bytes=int(8.9 * GB),  # fp32: vision 2.7 GB + text graph 5.3 GB + embedding table 0.9 GB
)
GENERATOR = ModelSpec(
    part="generator",
    repo_id="Qwen/Qwen2-VL-2B-Instruct",
    revision="main",  # TODO: pin a commit sha
    download_bytes=int(4.5 * GB),
    bundle_bytes=int(
        9.8 * GB
    ),  # fp32: decoder with its own lm_head 6.2 GB + embedding table 0.9 GB + vision 2.7 GB (none when shared)
)
SPECS = {spec.part: spec for spec in (RETRIEVER, GENERATOR)}

# Peak memory of exporting one 2B checkpoint: the fp32 model (≈ 9 GB) while the dynamo
# exporter traces the largest graph (the decoder's export alone peaked at 7.3 GB).
MIN_RAM_BYTES = 14 * GB
DISK_MARGIN = 1.1  # 10 % on top of the estimates: logs, temporary files, filesystem overhead


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- resources ---------------------------------------------------------------------------


def total_memory_bytes() -> int | None:
    """Physical memory of this machine, without psutil; None when it cannot be told."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would, once created)."""
    return shutil.disk_usage(_existing_parent(path)).free


def _env_bytes(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(float(value))
    except ValueError:
        raise InputError(f"{name}={value!r} is not a number of bytes") from None


def cached_bytes(cache_dir: Path, repo_id: str) -> int:
    """Bytes of `repo_id` already in the huggingface_hub cache (complete and partial blobs)."""
    blobs = cache_dir / ("models--" + repo_id.replace("/", "--")) / "blobs"
    if not blobs.is_dir():
        return 0
    return sum(p.stat().st_size for p in blobs.iterdir() if p.is_file())


@dataclass
class ResourceCheck:
    problems: list[str]
    warnings: list[str]


def check_resources(
    specs: list[ModelSpec],
    downloads: list[ModelSpec],
    models_dir: Path,
    cache_dir: Path | None,
    *,
    free: Callable[[Path], int] = free_bytes,
    memory: Callable[[], int | None] = total_memory_bytes,
) -> ResourceCheck:
    """Compare free disk and total memory with what installing `specs` needs.

    `downloads` are the specs still to be fetched into `cache_dir` (bytes already cached
    count as fetched). The disk need can be overridden with COLRAG_INSTALL_MIN_FREE_BYTES,
    the memory need with COLRAG_INSTALL_MIN_RAM_BYTES.
    """
    problems: list[str] = []
    warnings: list[str] = []
    bundle_need = int(sum(s.bundle_bytes for s in specs) * DISK_MARGIN)
    download_need = 0
    if cache_dir is not None:
        download_need = int(
            sum(max(0, s.download_bytes - cached_bytes(cache_dir, s.repo_id)) for s in downloads) * DISK_MARGIN
        )
    needs: dict[Path, int] = {}
    devices: dict[Path, int] = {}
    for folder, need in ((models_dir, bundle_need), (cache_dir, download_need)):
        if folder is None or need <= 0:
            continue
        root = _existing_parent(folder)
        dev = root.stat().st_dev
        same = next((p for p, d in devices.items() if d == dev), None)
        if same is not None:
            needs[same] += need
        else:
            devices[root] = dev
            needs[root] = need
    override = _env_bytes(MIN_FREE_ENV)
    if override is not None:  # one figure for everything, checked against the models dir
        needs = {_existing_parent(models_dir): override}
    for folder, need in needs.items():
        have = free(folder)
        if have < need:
            problems.append(
                f"not enough free disk: installing {' and '.join(s.part for s in specs)} needs "
                f"about {need / GB:.1f} GB "
                f"on the filesystem of {folder}, {have / GB:.1f} GB are free"
            )
    ram_need = _env_bytes(MIN_RAM_ENV)
    ram_need = MIN_RAM_BYTES if ram_need is None else ram_need
    ram = memory()
    if ram is None:
        warnings.append("could not tell this machine's memory; exporting a 2B model needs about 14 GB")
    elif ram < ram_need:
        problems.append(
            f"not enough memory: exporting needs about {ram_need / GB:.0f} GB of RAM, this machine "
            f"has {ram / GB:.1f} GB"
        )
    return ResourceCheck(problems, warnings)


# -- installing ----------------------------------------------------------------------------


@dataclass
class InstallResult:
    part: str
    bundle: Path
    status: str  # "installed" | "kept"
    source: str | None
    revision: str | None
    files: int
    bytes: int

    def as_dict(self) -> dict:
        return {**self.__dict__, "bundle": str(self.bundle)}


def _healthy(bundle: Path, part: str) -> dict | None:
    try:
        return load_manifest(bundle, part)
    except BundleError:
        return None


def _result(part: str, bundle: Path, status: str, manifest: dict) -> InstallResult:
    return InstallResult(
        part=part,
        bundle=bundle,
        status=status,
        source=manifest.get("source"),
        revision=manifest.get("revision"),
        files=len(manifest["files"]),
        bytes=sum(int(f.get("size", 0)) for f in manifest["files"].values()),
    )


def _check_checkpoint_dir(path: Path, part: str) -> Path:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise InputError(f"--{part}-from {path}: not a checkpoint folder (no config.json)")
    return path


def _export(
    part: str,
    src: Path,
    target: Path,
    *,
    quantize: str,
    share_vision_with: Path | None,
    replace: bool,
    verbose: bool = False,
) -> dict:
    """Export into `target`; `replace` lets the exporter replace a bundle of this kind there (nothing else)."""
    if part == "retriever":
        from .export.retriever import export_retriever

        return export_retriever(src, target, quantize=quantize, force=replace, verbose=verbose)
    try:
        from .export.generator import export_generator
    except ImportError as exc:
        raise ColragError(
            f"this colrag cannot export the generator yet ({_first_line(exc)}); install with --only retriever"
        ) from exc
    return export_generator(
        src, target, share_vision_with=share_vision_with, quantize=quantize, force=replace, verbose=verbose
    )


@contextlib.contextmanager
def _download_bars(show: bool) -> Iterator[None]:
    """The Hub's tqdm download bars: useful on a terminal, noise in a log file."""
    if show or ("huggingface_hub" not in sys.modules and importlib.util.find_spec("huggingface_hub") is None):
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def install(
    models_dir: Path,
    *,
    only: str | None = None,
    retriever_from: Path | None = None,
    generator_from: Path | None = None,
    quantize: str = DEFAULT_QUANTIZE,
    force: bool = False,
    reinstall: bool = False,
    verbose: bool = False,
) -> list[InstallResult]:
    """Install the retriever and/or generator bundles into `models_dir`.

    A part whose bundle already loads is kept unless `reinstall`. Checkpoints come from
    `<part>_from` folders when given, else from the Hub (SPECS). `force` skips the disk
    and memory refusal. Progress goes to stderr: colrag's own lines, plus the Hub's download
    bars on a terminal; `verbose` adds everything the libraries print (logs, warnings, bars).
    """
    if only is not None and only not in PARTS:
        raise InputError(f"unknown part {only!r}: choose {' or '.join(PARTS)}")
    if quantize not in QUANTIZE_CHOICES:
        raise InputError(f"unknown quantization {quantize!r}: choose {', '.join(QUANTIZE_CHOICES)}")
    sources = {"retriever": retriever_from, "generator": generator_from}
    for part, src in sources.items():
        if src is not None and only is not None and part != only:
            raise InputError(f"--{part}-from was given with --only {only}")
    parts = [only] if only else list(PARTS)
    models_dir = Path(models_dir).expanduser()
    results: dict[str, InstallResult] = {}
    todo: list[str] = []
    for part in parts:
        target = models_dir / part
        manifest = None if reinstall else _healthy(target, part)
        if manifest is not None:
            _log(f"{part}: a bundle is already installed at {target} (pass --reinstall to replace it)")
            results[part] = _result(part, target, "kept", manifest)
        else:
            todo.append(part)
    if not todo:
        return [results[p] for p in parts]
    from .export.common import check_target

    # only an empty folder or a bundle of the same kind is replaced: refused before any download
    replaces = {part: check_target(models_dir / part, part, force=True) for part in todo}

    from .export import require_export_deps

    require_export_deps()  # before gigabytes are downloaded for nothing
    local = {part: _check_checkpoint_dir(src, part) for part in todo if (src := sources[part]) is not None}
    downloads = [SPECS[p] for p in todo if p not in local]
    cache_dir = None
    if downloads:
        _require_hub()
        cache_dir = hub_cache_dir()
    check = check_resources([SPECS[p] for p in todo], downloads, models_dir, cache_dir if not hub_offline() else None)
    for w in check.warnings:
        _log(f"warning: {w}")
    if check.problems:
        if not force:
            raise ColragError("; ".join(check.problems) + " (pass --force to try anyway)")
        for p in check.problems:
            _log(f"warning: {p} (going on: --force)")

    checkpoints = dict(local)
    with _download_bars(verbose or sys.stderr.isatty()):
        for spec in downloads:  # download everything first: network trouble shows before the long exports
            checkpoints[spec.part] = download(spec)
    models_dir.mkdir(parents=True, exist_ok=True)
    for part in todo:
        target = models_dir / part
        share = None
        if part == "generator":
            retriever = models_dir / "retriever"
            if _healthy(retriever, "retriever") is not None:
                share = retriever  # used only if its vision tower has the same weights (checked by hash)
        if part == "retriever":
            generator = _healthy(models_dir / "generator", "generator")
            if generator is not None and generator.get("shared_vision") and "generator" not in todo:
                _log(
                    "warning: the installed generator shares this retriever's vision graph: reinstall it too "
                    "(--reinstall --only generator)"
                )
        _log(f"{part}: exporting {checkpoints[part]} to {target} (quantize: {quantize})")
        with contextlib.redirect_stdout(sys.stderr):  # torch.onnx prints its progress: keep stdout for results
            manifest = _export(
                part,
                checkpoints[part],
                target,
                quantize=quantize,
                share_vision_with=share,
                replace=replaces[part],
                verbose=verbose,
            )
        results[part] = _result(part, target, "installed", manifest)
    return [results[p] for p in parts]
