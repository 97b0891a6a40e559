"""Scones Unlimited, the application: deploy, ETL, test cases, monitoring, the stack helper.

Dependency direction, one way: `scripts/` (entry points) -> `scones` -> the services' public
clients (`services.local_aws.profile`) and the repository's `lambdas/`, `statemachine/`, `model/`.
"""
