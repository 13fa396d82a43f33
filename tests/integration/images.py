"""Run a built image's entrypoint here without a container runtime: buildah mounts the image's filesystem,
and the command runs in a chroot in its own mount namespace — as the image's user, on a read-only root
with a tmpfs /tmp (as the chart runs the pods), with files bound in where the pods get volumes."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.conftest import children_of

ROOT = Path(__file__).resolve().parents[2]


def tags() -> dict[str, str]:
    """{role: image} as scripts/build_images.sh builds them."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build_images.sh"), "--print-tags"], check=True,
                         capture_output=True, text=True).stdout.split()
    return {t.split("/")[-1].split(":")[0]: t for t in out}


def buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], check=True, capture_output=True, text=True).stdout.strip()


def image_config(image: str) -> dict[str, Any]:
    return dict(json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"])


def image_history(image: str) -> list[dict[str, Any]]:
    return list(json.loads(buildah("inspect", "--type", "image", image))["OCIv1"].get("history") or [])


def added_layers(image: str, base: str | None) -> list[list[str]]:
    """The paths in each layer `image` has on top of `base` (the builder's own layers, not the base's):
    the image is pushed uncompressed to a directory and its layer tarballs listed."""
    with tempfile.TemporaryDirectory(prefix="smartspec-layers-") as d:
        subprocess.run(["buildah", "push", "--quiet", "--disable-compression", image, f"dir:{d}"], check=True,
                       capture_output=True)
        manifest = json.loads((Path(d) / "manifest.json").read_text())
        layers = [entry["digest"].split(":")[1] for entry in manifest["layers"]]
        skip = len(json.loads(buildah("inspect", "--type", "image", base))["OCIv1"]["rootfs"]["diff_ids"]) \
            if base else 0
        out = []
        for digest in layers[skip:]:
            with tarfile.open(Path(d) / digest) as tar:
                out.append(tar.getnames())
        return out


@dataclass
class MountedImage:
    """An image's filesystem, mounted through a throwaway working container (removed by close())."""

    image: str
    container: str = ""
    root: Path = field(default_factory=Path)

    def __post_init__(self) -> None:
        self.container = buildah("from", "--pull=never", "--quiet", self.image)
        self.root = Path(buildah("mount", self.container))
        self.config = image_config(self.image)

    def close(self) -> None:
        subprocess.run(["buildah", "umount", self.container], capture_output=True)
        subprocess.run(["buildah", "rm", self.container], capture_output=True)

    def start(self, argv: list[str], binds: dict[str, str] | None = None, user: str | None = None,
              entrypoint: bool = True) -> subprocess.Popen[str]:
        """Run (the entrypoint +) argv; `binds` {host path: path in the image} are read-only."""
        user = user or self.config.get("User") or "0"
        if ":" not in user:
            user = f"{user}:{user}"
        r = shlex.quote(str(self.root))
        lines = ["set -e", "mount --make-rprivate /", f"mount --bind {r} {r}"]
        for host, inside in (binds or {}).items():
            dest = shlex.quote(str(self.root) + inside)
            kind = "-d" if Path(host).is_dir() else "-f"
            make = f"mkdir -p {dest}" if kind == "-d" else f"mkdir -p $(dirname {dest}) && touch {dest}"
            lines += [f"[ -e {dest} ] || ({make})", f"mount --bind {shlex.quote(host)} {dest}",
                      f"mount -o remount,bind,ro {dest}"]
        lines += [f"mount -t proc proc {r}/proc", f"mount -t tmpfs -o size=512m,mode=1777 tmpfs {r}/tmp",
                  f"mount --rbind /dev {r}/dev", f"mount -o remount,bind,ro {r}"]
        env = [e for e in self.config.get("Env") or [] if not e.startswith("HOME=")] + ["HOME=/tmp"]
        command = [*(self.config.get("Entrypoint") or [] if entrypoint else []), *argv]
        lines.append("exec chroot --userspec=" + user + " " + r + " /usr/bin/env -i "
                     + " ".join(shlex.quote(e) for e in env) + " " + " ".join(shlex.quote(a) for a in command))
        # --kill-child: the command never outlives unshare (a test killed half-way leaves nothing running).
        return subprocess.Popen(["unshare", "--mount", "--fork", "--kill-child=SIGTERM", "sh", "-c", "\n".join(lines)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def stop(proc: subprocess.Popen[str], timeout_s: float = 30) -> None:
        """SIGTERM the command (it drains and exits, as in a pod), SIGKILL it if it outlives `timeout_s`."""
        # unshare ignores SIGTERM while it waits for its child: signal the child, it exits, then unshare does.
        children = children_of(proc.pid)
        for c in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for c in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)

    def run(self, argv: list[str], timeout_s: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
        proc = self.start(argv, **kw)
        out, _ = proc.communicate(timeout=timeout_s)
        return subprocess.CompletedProcess(argv, proc.returncode, out, "")


def readable_copy(src: str | Path, dest: Path, uid: int = 10001) -> Path:
    """`src` copied where the image's user can read it (pytest's temporary folders are private to root)."""
    if Path(src).is_dir():
        shutil.copytree(src, dest)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest)
    for p in [dest, *dest.rglob("*")] if dest.is_dir() else [dest]:
        os.chown(p, uid, uid)
        p.chmod(0o500 if p.is_dir() else 0o400)  # read-only, as a mounted volume or Secret is
    return dest
