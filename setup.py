"""MozPool on Twisted: packaging, console scripts and the twistd plugin."""

import glob
import re

from setuptools import find_packages, setup

with open("mozpool/__init__.py") as f:
    version = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

setup(
    name="mozpool",
    version=version,
    description="Device-pool manager for labs of phones and dev boards, on Twisted",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mozpool", "mozpool.*"]) + ["twisted.plugins"],
    package_data={"mozpool": ["config.ini.dist"]},
    # The schema lives in sql/ (the design card's layout); installed copies go under
    # share/mozpool/sql, where mozpool.db.schema looks when it is not run from a checkout.
    data_files=[
        ("share/mozpool", ["mozpool.tac"]),
        ("share/mozpool/sql/sqlite", sorted(glob.glob("sql/sqlite/*.sql"))),
        ("share/mozpool/sql/mysql", sorted(glob.glob("sql/mysql/*.sql"))),
    ],
    install_requires=[
        "Twisted[conch]>=23.10",
        "klein>=23.5",
        "treq>=23.11",
        "Automat>=24.8",
        "PyMySQL>=1.1",
        "zope.interface>=6.0",
    ],
    extras_require={"test": []},
    entry_points={
        "console_scripts": [
            "mozpool-db = mozpool.cli.db:main",
            "pxe-config = mozpool.cli.pxe_config:main",
            "relay = mozpool.cli.relay:main",
        ],
    },
    include_package_data=False,
    zip_safe=False,
)
