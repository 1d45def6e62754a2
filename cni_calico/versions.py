"""The CNI spec versions we speak (no imports: the executables' first lines read it)."""

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]


def version_info(stdin: bytes) -> dict:
    """The VERSION reply: the caller's cniVersion when we speak it, else the latest."""
    import json

    try:
        asked = json.loads(stdin or b"{}").get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        asked = None
    return {"cniVersion": asked if asked in SUPPORTED_VERSIONS else LATEST_VERSION,
            "supportedVersions": list(SUPPORTED_VERSIONS)}
