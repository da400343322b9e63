"""edgefleet's rules, in report order: name, title, default enforcement level, check, the settings each reads.

`edgefleet policy`, `edgefleet plan` and the CrossGuard pack (pack.py) all run this one list, so the rules cannot
drift between them. The checks live by concern: models.py, rollouts.py, hardening.py (which adds each platform's
part, policies/<platform>.py, found through components/registry.py).

Standard library only and no imports from edgefleet: the pack's own virtualenv needs nothing but pulumi-policy.
Loads as `policies.rules` or, in that virtualenv (policies/ as sys.path[0]), as `rules`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

if __package__:
    from .capture import CAPTURE_RULE, check_capture_destination
    from .engine import ADVISORY, LEVELS, MANDATORY, Report, Rule, run_rule
    from .graph import Graph
    from .hardening import (
        DEVICE_CREDENTIALS_RULE,
        IAM_RULE,
        REGISTRY_RULE,
        SIGNING_KEY_RULE,
        STORE_RULE,
        check_device_credentials,
        check_iam,
        check_registry,
        check_signing_key,
        check_store,
    )
    from .models import (
        check_breaking_io,
        check_hardware,
        check_metric_floor,
        check_metric_regression,
        check_metrics_measured,
        check_model_digest,
        check_model_signed,
        check_variant_quality,
    )
    from .rollouts import (
        check_one_rollout_per_device,
        check_production_canary,
        check_production_quality,
        check_ring_sizes_declared,
        check_rings_select_devices,
    )
    from .settings import Settings
else:
    from capture import CAPTURE_RULE, check_capture_destination  # type: ignore[no-redef]
    from engine import ADVISORY, LEVELS, MANDATORY, Report, Rule, run_rule  # type: ignore[no-redef]
    from graph import Graph  # type: ignore[no-redef]
    from hardening import (  # type: ignore[no-redef]
        DEVICE_CREDENTIALS_RULE,
        IAM_RULE,
        REGISTRY_RULE,
        SIGNING_KEY_RULE,
        STORE_RULE,
        check_device_credentials,
        check_iam,
        check_registry,
        check_signing_key,
        check_store,
    )
    from rollouts import (  # type: ignore[no-redef]
        check_one_rollout_per_device,
        check_production_canary,
        check_production_quality,
        check_ring_sizes_declared,
        check_rings_select_devices,
    )
    from settings import Settings  # type: ignore[no-redef]

    from models import (  # type: ignore[no-redef]
        check_breaking_io,
        check_hardware,
        check_metric_floor,
        check_metric_regression,
        check_metrics_measured,
        check_model_digest,
        check_model_signed,
        check_variant_quality,
    )

RULES: tuple[Rule, ...] = (
    Rule(
        "model-signed-by-stack-key",
        "Models are signed by the stack's signing key",
        MANDATORY,
        check_model_signed,
        description="Every ModelVersion names this stack's SigningKey for each store it publishes to, and its published "
        "resources depend on that key; devices verify the signature before loading a model.",
    ),
    Rule(
        "model-digest-matches-artifact",
        "Manifest digest matches the artifact",
        MANDATORY,
        check_model_digest,
        description="The sha256/size the manifest pins are what every publication, ring and deployment carries, "
        "and (offline) what the artifact file on disk hashes to.",
    ),
    Rule(
        "production-canary-ring",
        "Production rollouts start with a small, soaked canary",
        MANDATORY,
        check_production_canary,
        ("production", "canary_max_share", "min_canary_soak_seconds", "ring_devices", "rollout_devices", "declared_ring_devices"),
        "With policy.production, each rollout's first ring covers at most policy.canary_max_share of its devices and "
        "soaks at least policy.min_canary_soak_seconds.",
    ),
    Rule(
        "rings-select-devices",
        "Every ring selects devices",
        MANDATORY,
        check_rings_select_devices,
        ("ring_devices", "declared_ring_devices"),
        "A ring whose device count is known (the local fleet's membership, a cloud ring's declared size) selects at least one "
        "device: an empty ring would wait out its deadline and fail a version no device ran.",
    ),
    Rule(
        "ring-size-declared",
        "Cloud rings declare how many devices they reach",
        ADVISORY,
        check_ring_sizes_declared,
        ("ring_devices", "declared_ring_devices"),
        "Rings that select by attributes declare their size (edgefleet:aws.rings.<ring>.devices), so an empty or shrunken ring "
        "shows before deploy.",
    ),
    Rule(
        "one-rollout-per-device",
        "A model reaches each device through one rollout",
        MANDATORY,
        check_one_rollout_per_device,
        description="Two rollouts of one model never target groups that can hold the same device: each would set versions the "
        "other's gates never judged, on devices the other's rollback would not cover.",
    ),
    Rule(
        "production-quality-gates",
        "Production rollouts judge what the model says",
        ADVISORY,
        check_production_quality,
        ("production",),
        "With policy.production, each rollout has a ring whose gate sets a quality criterion (shadow agreement, prediction "
        "shift, confidence drop or latency ratio against the previous version, live accuracy). Advisory: health gates "
        "still stop a model that fails or returns NaN.",
    ),
    Rule(
        "metric-floor",
        "Evaluation metrics meet the stack's floors",
        MANDATORY,
        check_metric_floor,
        ("metric_floors",),
        "Every model declares each metric named in policy.metric_floors, at or above the floor (at or below it when lower is better).",
    ),
    Rule(
        "metric-regression",
        "Metrics do not regress from the version replaced",
        MANDATORY,
        check_metric_regression,
        ("max_metric_regression", "base_models"),
        "Against the base graph, no metric gets worse by more than policy.max_metric_regression (absolute, in the metric's units).",
    ),
    Rule(
        "variant-quality",
        "Model variants measure close to their reference",
        MANDATORY,
        check_variant_quality,
        ("max_variant_drop", "min_variant_agreement"),
        "Each variant of a model version (int8, fp16: `edgefleet model variant add`) was compared with its reference on the "
        "version's pinned evaluation set, drops its metric by at most policy.max_variant_drop and agrees with the reference's "
        "top-1 on at least policy.min_variant_agreement of the frames.",
    ),
    Rule(
        "metrics-measured",
        "Production models ship measured metrics",
        MANDATORY,
        check_metrics_measured,
        ("production",),
        "With policy.production, every metric a model carries was measured by `edgefleet model evaluate` on an evaluation set "
        "pinned by its digest (the manifest's evaluation), none only declared (typed in with `model add --metric`); a model "
        "without measured metrics is refused. Stacks without production (the shipped local sandbox) allow declared metrics.",
    ),
    Rule(
        "breaking-io-needs-agent",
        "Breaking I/O changes declare a supporting agent",
        MANDATORY,
        check_breaking_io,
        ("agent_versions", "base_models"),
        "A model's min_agent_version is one the fleet runs; an incompatible I/O change (against the base) raises min_agent_version.",
    ),
    Rule(
        "hardware-can-run-model",
        "Models go only to hardware that can run them",
        MANDATORY,
        check_hardware,
        description="Each ring's group hardware matches one of the model's targets (arch, execution provider, memory and "
        "storage budgets) and the model fits the group's budgets.",
    ),
    Rule(
        STORE_RULE,
        "Model stores are private and encrypted",
        MANDATORY,
        check_store,
        description="ModelStore outputs, S3 buckets (public access block, SSE, ACLs, bucket policies), Azure storage accounts and containers.",
    ),
    Rule(
        REGISTRY_RULE,
        "Registries have no admin user and immutable tags",
        MANDATORY,
        check_registry,
        description="ECR repositories are IMMUTABLE; Azure container registries have no admin user and no anonymous pull.",
    ),
    Rule(
        SIGNING_KEY_RULE,
        "Signing keys cannot be exported",
        MANDATORY,
        check_signing_key,
        description="SigningKey outputs exportable: false; no KMS external (imported) keys; Key Vault keys not exportable and without release policy.",
    ),
    Rule(
        DEVICE_CREDENTIALS_RULE,
        "Device credentials are not about to expire",
        ADVISORY,
        check_device_credentials,
        ("azure_sas_expiry", "today", "sas_warning_days"),
        "The SAS Azure devices download models with (edgefleet:azure.device_sas_expiry) ends more than "
        "sas_warning_days (30) days from now. Advisory by default so an urgent fix can still ship; loading a stack "
        "whose SAS has already expired is an error.",
    ),
    Rule(
        IAM_RULE,
        "IAM grants no wildcard actions",
        MANDATORY,
        check_iam,
        description="IAM and IoT policies, role inline and trust policies, KMS key policies and S3/ECR resource policies "
        "allow no action containing '*' and no Allow+NotAction (Deny statements may use wildcards), "
        "and no AdministratorAccess-like managed policies are attached.",
    ),
    Rule(
        CAPTURE_RULE,
        "Sample capture has a declared destination",
        MANDATORY,
        check_capture_destination,
        ("capture_destination",),
        "A stack whose rings capture samples (a ring's capture) declares where captured data may go, for how long and why "
        "(edgefleet:capture: store, retention_days, purpose), and that store is not the model store. Mandatory: once "
        "captured, a device's real inputs have left it.",
    ),
)
RULES_BY_NAME = {r.name: r for r in RULES}


def evaluate(resources: Iterable[Mapping[str, Any]], settings: Settings) -> Report:
    """Runs every rule over a graph's records under the stack's enforcement levels."""
    unknown = sorted(set(settings.enforcement) - set(RULES_BY_NAME))
    if unknown:
        raise ValueError(
            f"edgefleet:policy.enforcement names no rule {', '.join(map(repr, unknown))}; rules are: {', '.join(RULES_BY_NAME)}"
        )
    bad = {k: v for k, v in settings.enforcement.items() if v not in LEVELS}
    if bad:
        raise ValueError(f"edgefleet:policy.enforcement: {bad} - levels are {', '.join(LEVELS)}")
    graph = Graph(resources)
    return Report(settings.stack, [run_rule(rule, graph, settings) for rule in RULES], settings.base_models is not None)
