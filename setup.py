"""Ships compat_matrix/ and lockfiles/ inside the wheel as moe_env/_data/ (see moe_env/paths.py).

They live at the top of the repository because they are curated data, reviewed on their own;
pyproject.toml cannot map a top-level folder into a package while also finding packages, so this does.
"""

from setuptools import find_packages, setup

DATA_PACKAGES = {
    "moe_env._data.compat_matrix": "compat_matrix",
    "moe_env._data.lockfiles": "lockfiles",
}

setup(
    packages=find_packages(include=["moe_env", "moe_env.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={name: ["**/*.toml", "**/*.md", "**/*.txt", "**/*.json"] for name in DATA_PACKAGES},
)
