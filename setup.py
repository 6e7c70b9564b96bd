"""Package metadata, read from settings.ini as nbdev 2 projects do."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read(Path(__file__).parent / "settings.ini")
c = cfg["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
lic = licenses[c["license"]]
readme = Path(__file__).parent / "README.md"

setuptools.setup(
    name=c["lib_name"],
    version=c["version"],
    description=c["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=c["author"],
    author_email=c["author_email"],
    url=c["git_url"],
    license=lic[0],
    classifiers=[
        "Development Status :: 3 - Alpha",
        f"Intended Audience :: {c['audience']}",
        f"License :: {lic[1]}",
        "Natural Language :: English",
        "Programming Language :: Python :: 3",
    ],
    keywords=c["keywords"].split(),
    packages=setuptools.find_packages(include=["ccrlab", "ccrlab.*"]),
    include_package_data=True,
    python_requires=f">={c['min_python']}",
    install_requires=c["requirements"].split(),
    extras_require={"dev": c["dev_requirements"].split()},
    entry_points={"nbdev": [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
    zip_safe=False,
)
