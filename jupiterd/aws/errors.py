"""AWS failures as jupiterd speaks of them: each names the IAM action and
the resource, and says what a person can do (see ``jupiterd.aws.client``)."""

from __future__ import annotations

import re

import botocore.exceptions
import botocore.loaders
import botocore.session

# boto3 service name -> IAM service prefix
IAM_PREFIX = {
    "cloudwatch": "cloudwatch",
    "dynamodb": "dynamodb",
    "ec2": "ec2",
    "elbv2": "elasticloadbalancing",
    "route53": "route53",
    "sns": "sns",
    "sts": "sts",
}

_DENIED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "AuthorizationError",
        "UnauthorizedAccess",
        "Forbidden",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "AuthFailure",
    }
)
_THROTTLED = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "SlowDown",
        "BandwidthLimitExceeded",
    }
)
_ENCODED = re.compile(r"\s*Encoded authorization failure message:.*", re.S)


def iam_action(service: str, operation: str) -> str:
    return f"{IAM_PREFIX.get(service, service)}:{operation}"


class AwsError(Exception):
    """An AWS call failed; ``str()`` is the sentence for logs and outcomes."""

    result = "error"  # the metric's result label

    def __init__(self, action: str, resource: str, code: str, message: str) -> None:
        self.action = action
        self.resource = resource
        self.code = code
        self.message = message
        super().__init__(self.sentence())

    def sentence(self) -> str:
        msg = f": {self.message}" if self.message else ""
        return f"{self.action} on {self.resource} failed ({self.code}{msg})"


class AwsAccessDenied(AwsError):
    result = "denied"

    def sentence(self) -> str:
        return (
            f"AWS denied {self.action} on {self.resource} ({self.code}): "
            f"the IAM policy must allow {self.action} on {self.resource}"
        )


class AwsNotFound(AwsError):
    result = "not_found"

    def sentence(self) -> str:
        msg = f": {self.message}" if self.message else ""
        return f"{self.resource} does not exist ({self.code} from {self.action}{msg})"


class AwsThrottled(AwsError):
    result = "throttled"

    def sentence(self) -> str:
        return (
            f"{self.action} on {self.resource} was still throttled after every retry ({self.code})"
        )


class AwsUnavailable(AwsError):
    """No answer at all: endpoint unreachable, timeouts, no credentials."""

    result = "unreachable"

    def sentence(self) -> str:
        return f"{self.action} on {self.resource}: {self.message}"


def _short(message: str) -> str:
    message = _ENCODED.sub("", message).strip()
    return message if len(message) <= 300 else message[:297] + "..."


def classify(exc: BaseException, action: str, resource: str) -> AwsError | None:
    """botocore's exception -> ours; None for what is not an AWS failure."""
    if isinstance(exc, botocore.exceptions.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "Unknown")
        message = _short(str(err.get("Message") or ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _DENIED:
            return AwsAccessDenied(action, resource, code, message)
        if code in _THROTTLED:
            return AwsThrottled(action, resource, code, message)
        if (
            code.endswith("NotFound")
            or code.startswith("NoSuch")
            or code == "InvalidInstanceID.Malformed"
        ):
            return AwsNotFound(action, resource, code, message)
        if isinstance(status, int) and status >= 500:
            return AwsError(action, resource, code, f"AWS answered {status} after every retry")
        return AwsError(action, resource, code, message)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return AwsUnavailable(
            action,
            resource,
            "NoCredentials",
            "no AWS credentials found (instance profile, environment, or shared config)",
        )
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.ReadTimeoutError
        | botocore.exceptions.ConnectionClosedError,
    ):
        return AwsUnavailable(
            action, resource, type(exc).__name__, f"cannot reach the AWS endpoint ({exc})"
        )
    return None
