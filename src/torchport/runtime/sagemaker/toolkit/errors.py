"""The toolkit's errors: a script raises them to choose the status of its answer."""

from __future__ import annotations


class UnsupportedFormatError(Exception):
    """A content type (of a request, or asked for in Accept) that cannot be handled."""

    def __init__(self, content_type: str, **kwargs: object) -> None:
        self.content_type = content_type
        super().__init__(
            f"Content type {content_type} is not supported by this framework: implement "
            "input_fn to deserialize the request data or output_fn to serialize the response"
        )


class BaseInferenceToolkitError(Exception):
    """An error whose status code and message are the answer."""

    def __init__(self, status_code: int, message: str, phrase: str) -> None:
        self.status_code = status_code
        self.message = message
        self.phrase = phrase
        super().__init__(status_code, message, phrase)


class GenericInferenceToolkitError(BaseInferenceToolkitError):
    def __init__(
        self, status_code: int, message: str | None = None, phrase: str | None = None
    ) -> None:
        message = message or "Invalid Request"
        super().__init__(status_code, message, phrase or message)
