"""The member and operator HTTP API (FastAPI): ``app.create_app`` and one router per
feature, each built from the one feature object it serves and ``deps``' helpers."""
