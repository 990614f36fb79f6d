"""ECS task role / EKS Pod Identity container credentials endpoint."""

from .server import Reply, json_bytes
from .service import Service

ECS_PATHS = ("/creds", "/v1/credentials")


class EcsService(Service):
    """ECS task role / EKS Pod Identity container credentials endpoint.

    aws-config sends GET <path> with Accept: application/json and, when
    configured, Authorization: <token> (contents of
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, re-read on every fetch, else
    AWS_CONTAINER_AUTHORIZATION_TOKEN).
    """

    name = "ecs"
    content_type = "application/json"

    def inspect(self, req, entry):
        auth = req.header("authorization")
        with self.world.lock:
            entry["auth_source"] = (
                "env" if auth == self.world.container_token else
                "file" if auth == self.world.container_file_token else
                None if auth is None else "invalid")

    def serve(self, req, entry, fault):
        if req.method != "GET":
            return self.error_reply(405, "MethodNotAllowed", "use GET")
        if req.path not in ECS_PATHS:
            return self.error_reply(404, "NotFound", "no such path")
        with self.world.lock:
            require_auth = self.world.ecs_require_auth
        source = entry["auth_source"]
        if source == "invalid" or (source is None and require_auth):
            return self.error_reply(401, "AccessDenied", "invalid authorization token")
        cred = self.world.credential(self.name, self.world.role_arn, fault)
        entry["issued_akid"] = cred.access_key_id
        return Reply(200, json_bytes({
            "RoleArn": cred.role_arn,
            "AccessKeyId": cred.access_key_id,
            "SecretAccessKey": cred.secret_access_key,
            "Token": cred.session_token,
            "Expiration": cred.expiration_iso,
        }), self.content_type)
