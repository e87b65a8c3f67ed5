"""Build the compiled frame codec (cim/_frame.pyx).

Set CIM_NO_EXTENSIONS=1 to build without it: ``cim.frame`` then falls back to the
pure-Python twin. Without that variable a failed compile fails the build, loudly,
so a slow pure-Python install never happens by accident.
"""

import os

from setuptools import Extension, setup


def extensions() -> list[Extension]:
    if os.environ.get("CIM_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    return cythonize(
        [Extension("cim._frame", ["cim/_frame.pyx"], extra_compile_args=["-O3"])],
        compiler_directives={"language_level": "3"},
    )


setup(ext_modules=extensions())
