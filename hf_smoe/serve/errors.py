"""The one error a request can end in: an HTTP status and a JSON body naming the field and the fix."""


class RequestError(Exception):
    """A request the server refuses: `status` (4xx; 503 when overloaded, 507 when a user's router cannot be
    written), the `field` at fault, a `message` saying what is wrong and what to send instead, and `retry_after`
    seconds for overload."""

    def __init__(self, status: int, field: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.retry_after = status, field, message, retry_after

    def body(self) -> dict:
        """OpenAI's error shape (what vLLM answers too), with the field."""
        return {"error": {"message": f"{self.field}: {self.message}", "type": ERROR_TYPES.get(self.status, "error"),
                          "param": self.field, "code": self.status}}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "request_too_large", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "overloaded_error", 507: "server_error"}
