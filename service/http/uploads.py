"""Reading a request's images: multipart ``images`` file parts, or JSON with base64 data.

Every malformed upload becomes an :class:`~service.params.ApiError` (4xx) that says what to send.
"""

from __future__ import annotations

import base64
import binascii

from flask import request

from ..params import ApiError


def read_images(max_files: int) -> list[tuple[str, bytes]]:
    """The uploaded images, in upload order: multipart ``images`` files, or JSON with base64."""
    mt = request.mimetype
    if not mt and not request.content_length:
        raise ApiError(
            400, "missing_images", "no images: send multipart/form-data with one or more files under the field 'images'"
        )
    if mt == "multipart/form-data":
        files = request.files  # parsing here may raise 413 (MAX_CONTENT_LENGTH / MAX_FORM_PARTS)
        ups = files.getlist("images")
        fields = sorted(set(files) | set(request.form))
        if not ups:
            got = f" (got field(s) {', '.join(map(repr, fields))})" if fields else ""
            raise ApiError(400, "missing_images", f"no files under the multipart field 'images'{got}")
        other = sorted(set(files) - {"images"})
        if other:
            raise ApiError(
                400,
                "unexpected_field",
                f"files must be sent under the field 'images', got field(s) {', '.join(map(repr, other))}",
            )
        if request.form:
            names = sorted(request.form)
            hint = "send images as file parts" if "images" in names else "parameters go in the query string"
            raise ApiError(400, "unexpected_field", f"unexpected form field(s) {', '.join(map(repr, names))}; {hint}")
        if len(ups) > max_files:
            raise ApiError(
                413, "too_many_files", f"{len(ups)} files; at most {max_files} per request (server option --max-files)"
            )
        return [(u.filename or f"image-{i + 1}", u.read()) for i, u in enumerate(ups)]
    if mt == "application/json":
        body = request.get_json(silent=True)  # size limited by MAX_CONTENT_LENGTH
        if not isinstance(body, dict):
            raise ApiError(400, "bad_json", "the body is not a JSON object")
        if set(body) - {"images"}:
            raise ApiError(
                400,
                "unexpected_field",
                f"unexpected key(s) {sorted(set(body) - {'images'})}; "
                f"expected only 'images'; parameters go in the query string",
            )
        items = body.get("images")
        if not isinstance(items, list) or not items:
            raise ApiError(
                400, "missing_images", '\'images\' must be a non-empty list of {"name": str, "data": base64 str}'
            )
        if len(items) > max_files:
            raise ApiError(
                413,
                "too_many_files",
                f"{len(items)} images; at most {max_files} per request (server option --max-files)",
            )
        out = []
        for i, it in enumerate(items):
            if (
                not isinstance(it, dict)
                or not isinstance(it.get("data"), str)
                or set(it) - {"name", "data"}
                or not isinstance(it.get("name", ""), str)
            ):
                raise ApiError(400, "bad_json", f'images[{i}] must be {{"name": str, "data": base64 str}}')
            try:
                data = base64.b64decode(it["data"], validate=True)
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_base64", f"images[{i}].data is not valid base64") from None
            out.append((it.get("name") or f"image-{i + 1}", data))
        return out
    raise ApiError(
        415,
        "unsupported_media_type",
        f"send multipart/form-data with files under 'images' "
        f"(or application/json with base64 images), not {mt or 'no content type'!r}",
    )
