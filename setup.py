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
    package_data={
        "mozpool": ["config.ini.dist"],
        "mozpool.web.ui": ["templates/*", "static/*"],
    },
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
        # the inventory sync's YAML device lists (mozpool.inventory.filesource)
        "PyYAML>=6.0",
    ],
    # selenium drives Debian's chromium + chromedriver in the browser tests (no driver download);
    # schemathesis fuzzes /api/openapi.json against a --fakes daemon (tests/system/test_openapi_fuzz.py,
    # written for its 4.x command line and config file); pdudaemon (1.0+: its HTTP listener answers
    # when the PDU has switched) runs beside the daemon in tests/system/test_pdudaemon.py.
    extras_require={"test": ["selenium>=4.20", "schemathesis>=4.32,<5", "pdudaemon>=1.0"]},
    entry_points={
        "console_scripts": [
            "mozpool = mozpool.client.cli:main",
            "mozpool-db = mozpool.cli.db:main",
            "mozpool-inventorysync = mozpool.cli.inventorysync:main",
            "mozpool-token = mozpool.cli.token:main",
            "pxe-config = mozpool.cli.pxe_config:main",
            "relay = mozpool.cli.relay:main",
        ],
    },
    include_package_data=False,
    zip_safe=False,
)
