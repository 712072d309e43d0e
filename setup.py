"""Build hook for the compiled ops in csrc/ (metadata lives in pyproject.toml).

`get_extensions()` returns the C++ extensions to build: one per folder of
`csrc/` that holds sources. The CPU build is always made; CUDA sources (*.cu)
are compiled when a CUDA toolkit and a CUDA build of torch are present, or
when FORCE_CUDA=1 (TCAM_RAY_NO_CUDA=1 skips them). TORCH_CUDA_ARCH_LIST
selects the GPU architectures; when it is unset, the visible GPUs' are used,
or DEFAULT_CUDA_ARCH_LIST when no GPU is visible (CI, image builders).

Each extension embeds the hash of its folder's sources, the arch list and the
torch version, so the loader (tcam_ray/ops/_loader.py) can tell a stale build.
"""
import hashlib
import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


# Turing (T4), Ampere (A100; its SASS also runs on 8.6/8.9: A10, L4) and
# Hopper SASS, plus Hopper PTX that the driver JIT-compiles for newer GPUs.
# Measured on 2 cores: nvcc takes ~21 s for one arch, ~2-3 s per extra one.
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0+PTX"


def source_hash(op_dir: Path) -> str:
    """sha256 of the op folder's sources (names and bytes); the loader recomputes it."""
    digest = hashlib.sha256()
    for path in sorted(op_dir.iterdir()):
        if path.is_file() and path.suffix in {".h", ".cuh", ".cpp", ".cu"}:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def resolve_cuda_home() -> None:
    """Point CUDA_HOME at a toolkit that has headers before torch guesses it.

    torch takes dirname(dirname(which nvcc)); when nvcc is a wrapper script in
    /usr/local/bin that gives /usr/local, which has no CUDA headers.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [Path(nvcc).resolve().parent.parent] if nvcc else []
    candidates.append(Path("/usr/local/cuda"))
    for home in candidates:
        if (home / "include" / "cuda_runtime.h").exists():
            os.environ["CUDA_HOME"] = str(home)
            return


def cuda_wanted() -> bool:
    if os.environ.get("TCAM_RAY_NO_CUDA", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def cuda_arch_list() -> str:
    """The arch list nvcc will use, fixed in the environment so build and record agree."""
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        import torch

        if torch.cuda.is_available():
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            arch = ";".join(f"{major}.{minor}" for major, minor in caps) + "+PTX"
        else:
            arch = DEFAULT_CUDA_ARCH_LIST
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    return os.environ["TORCH_CUDA_ARCH_LIST"]


def build_macros(op_dir: Path, with_cuda: bool) -> list:
    import torch

    def quoted(text: str) -> str:
        return '"' + text + '"'

    macros = [
        ("TCAM_RAY_SOURCE_HASH", quoted(source_hash(op_dir))),
        ("TCAM_RAY_TORCH_VERSION", quoted(torch.__version__)),
    ]
    if with_cuda:
        macros += [
            ("WITH_CUDA", None),
            ("TCAM_RAY_CUDA_ARCH_LIST", quoted(cuda_arch_list())),
            ("TCAM_RAY_CUDA_VERSION", quoted(str(torch.version.cuda))),
        ]
    return macros


def get_extensions():
    if not CSRC.is_dir():
        return []
    op_dirs = sorted(p for p in CSRC.iterdir() if p.is_dir() and any(p.glob("*.cpp")))
    if not op_dirs:
        return []
    resolve_cuda_home()
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda = cuda_wanted()
    extensions = []
    for op_dir in op_dirs:
        sources = sorted(str(p.relative_to(ROOT)) for p in op_dir.glob("*.cpp"))
        cuda_sources = sorted(str(p.relative_to(ROOT)) for p in op_dir.glob("*.cu"))
        name = f"tcam_ray._C_{op_dir.name}"
        # Any change in the folder (headers included) rebuilds every object,
        # so the embedded source hash is always the current one.
        depends = sorted(str(p.relative_to(ROOT)) for p in op_dir.iterdir() if p.is_file())
        # torch >= 2.10 headers need C++20. at::parallel_for is inlined from
        # torch's headers and parallelises only with -fopenmp; the libgomp it
        # links is the one torch already loaded (same soname).
        cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
        link_flags = ["-fopenmp"]
        if with_cuda and cuda_sources:
            extensions.append(
                CUDAExtension(
                    name,
                    sources + cuda_sources,
                    depends=depends,
                    include_dirs=[str(op_dir)],
                    define_macros=build_macros(op_dir, with_cuda=True),
                    extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math", "-std=c++20"]},
                    extra_link_args=link_flags,
                )
            )
        else:
            extensions.append(
                CppExtension(
                    name,
                    sources,
                    depends=depends,
                    include_dirs=[str(op_dir)],
                    define_macros=build_macros(op_dir, with_cuda=False),
                    extra_compile_args={"cxx": cxx_flags},
                    extra_link_args=link_flags,
                )
            )
    return extensions


def cmdclass():
    if not get_extensions():
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=False)}


# The Typer app lives in the top-level `cli/` folder of the repository but is
# installed as `tcam_ray.cli`: no top-level module named `cli` lands in
# site-packages.
PACKAGES = find_packages(include=["tcam_ray", "tcam_ray.*"]) + ["tcam_ray.cli"]
PACKAGE_DIR = {"tcam_ray.cli": "cli"}

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=get_extensions(),
    cmdclass=cmdclass(),
)
