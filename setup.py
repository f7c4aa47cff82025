"""Build and install mambaad_kernels (with its compiled extension) and mambaad.

The compiled extension ``mambaad_kernels._C`` is built from ``csrc/`` with ninja through torch's
BuildExtension: the C++ sources always, the CUDA sources when a CUDA toolkit is found (nvcc on
PATH or CUDA_HOME), for ``TORCH_CUDA_ARCH_LIST`` if set, else sm_80 and sm_90.
``MAMBAAD_BUILD_EXT=0`` skips the extension and installs the pure-Python packages only.
"""

import glob
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern), recursive=True))


def extension_args():
    if os.environ.get("MAMBAAD_BUILD_EXT", "1") == "0":
        return {}
    cpp = _sources("csrc/**/*.cpp")
    if not cpp:
        return {}
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cu = _sources("csrc/**/*.cu")
    with_cuda = bool(cu) and CUDA_HOME is not None and os.environ.get("MAMBAAD_BUILD_CUDA", "1") != "0"
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    if os.environ.get("MAMBAAD_NATIVE", "1") == "1":
        cxx.append("-march=native")  # the extension is built on the machine that runs it
    kwargs = dict(name="mambaad_kernels._C", include_dirs=[os.path.join(HERE, "csrc")],
                  extra_link_args=["-fopenmp"])
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr",
                "-DMAMBAAD_WITH_CUDA"]
        ext = CUDAExtension(sources=cpp + cu, extra_compile_args={"cxx": cxx + ["-DMAMBAAD_WITH_CUDA"],
                                                                  "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=cpp, extra_compile_args={"cxx": cxx}, **kwargs)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=True)}}


setup(
    name="mambaad",
    version="0.1.0",
    description="Fused multi-direction state-space scan kernels for MambaAD, and a thin MambaAD model",
    packages=find_packages(include=["mambaad_kernels", "mambaad_kernels.*", "mambaad", "mambaad.*"]),
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "timm"],
    entry_points={"console_scripts": ["mambaad = mambaad.cli:main"]},
    **extension_args(),
)
