"""The web dashboard: live captions (draft, then final) from the caption store."""

from cloud.dashboard.app import create_app

__all__ = ["create_app"]
