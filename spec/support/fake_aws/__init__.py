"""Fake AWS credential endpoints for kong_rds_iam tests (Python 3 stdlib only).

One process serves, each on its own ephemeral 127.0.0.1 port:

* EC2 IMDS        (IMDSv2 token + iam/security-credentials, placement/region, ...)
* ECS/EKS         container credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI)
* STS             query protocol: AssumeRoleWithWebIdentity, AssumeRole,
                  GetCallerIdentity (SigV4 parsed and, when the secret is known,
                  verified)
* control         JSON API to inject faults and read request counts / logs

Wire formats follow what aws-config 1.13 / aws-sdk-sts send and parse (see
spec/support/README.md for the details that matter). Run it as
`python3 spec/support/fake_aws.py ...` (the entry point next to this package).

Modules, one concern each:

    server       HTTP plumbing: Request, Reply, REFUSE, FakeServer, Handler
    service      Service: base of the endpoints (log, inspect, fault, serve)
    faults       Fault: the failure modes (ok, timeout, garbage, expired, refuse, NNN)
    imds         ImdsService: EC2 IMDS (token policy, role credentials, region)
    container    EcsService: ECS task role / EKS Pod Identity
    sts          StsService: STS query protocol, SigV4 verification, XML
    credentials  Credential, CredentialIssuer, Registrar (rds-emulator add-key)
    world        World: settings, faults, tokens and credentials shared by all
    requestlog   RequestLog: request records and counters
    control      ControlService: the JSON control API
    cli          arguments, start-up JSON, lifetime (signals, stdin, parent pid)
    common       ACCOUNT_ID, SERVICES, write_private
"""
