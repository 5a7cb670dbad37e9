"""Packaging for chatgpt-apiserver."""

from setuptools import find_namespace_packages, setup

setup(
    name="chatgpt-apiserver",
    version="0.1.0",
    description="OpenAI-compatible chat-completions gateway that spreads requests over many API keys",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # Namespace packages too: web/static holds only the status page, and is a package for its data.
    packages=find_namespace_packages(include=["chatgpt_apiserver", "chatgpt_apiserver.*"], exclude=["*.__pycache__"]),
    package_data={"chatgpt_apiserver.web.static": ["*.html"],
                  "chatgpt_apiserver.endpoints": ["openai-endpoint-schemas.json"],
                  "chatgpt_apiserver.clients": ["prices.json"]},
    include_package_data=True,
    install_requires=[
        "tornado>=6.5",  # web/connections.py builds HTTPHeaders as 6.5 holds them (`_as_list`)
        "httptools>=0.6",
        "uvloop>=0.19",
        "orjson>=3.9",
        "voluptuous>=0.14",
        "configargparse>=1.7",
        "openai>=1.40",
        "PyYAML>=6.0",
        "prometheus-client>=0.17",
        "redis[hiredis]>=5.0",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-tornado>=0.8.1",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "ruff>=0.5",
            "mypy>=1.10",
            "types-PyYAML",
        ],
    },
    entry_points={"console_scripts": ["chatgpt-apiserver=chatgpt_apiserver.cli:main"]},
)
