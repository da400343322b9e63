"""The AWS platform: an AWS IoT Greengrass v2 fleet that receives models ring by ring.

What each Platform method declares (pulumi-aws, plus pulumi-aws-native for Greengrass v2 and dynamic
thing groups, which pulumi-aws lacks):
- signing_key: an asymmetric KMS key (ECC_NIST_P256, SIGN_VERIFY) only the deploying role can sign with.
- model_store: a versioned, KMS-encrypted S3 bucket with public access blocked and TLS-only access.
- app_registry: the agent's ECR repository (immutable tags, scan on push, lifecycle policy).
- device_group: the group's thing group (static for device ids, dynamic for labels), plus, once per stack,
  the `edgefleet:aws:Fleet` component: thing type, fleet indexing, the Greengrass device role (token
  exchange), its role alias and the core devices' IoT policy.
- publish_model: content-addressed artifact, manifest and KMS signature objects; the model component
  version, which depends on the stack's one agent component (declared once, with the fleet).
- ring: the ring's dynamic thing group, its Greengrass deployment, its CloudWatch alarms and its gate.

Deployments, replacement and what is never deleted
--------------------------------------------------
Every property of AWS::GreengrassV2::Deployment is create-only, so any change replaces the resource, and a
thing group has one active deployment: creating a deployment for it supersedes (and cancels) the previous
one. The ring's deployment therefore takes inputs from its own ring only: its thing group, the model and
agent component versions, and its own job policy. Ring N+1 waits for gate N through `depends_on`, a
pure ordering edge that puts nothing of ring N into ring N+1's inputs and nothing of ring N+1 into ring
N's, so editing a later ring never replaces (and so never re-runs or cancels) an earlier, healthy one.
The ring's thing-group query reads earlier rings only, for the same reason.

Replacement is Pulumi's default create-before-delete: the new deployment becomes the ring's active one
first (Greengrass supersedes the old revision itself), then Pulumi deletes the old resource. The resource's
delete handler cancels and deletes the deployment and its IoT job (its CloudFormation schema lists
greengrass:CancelDeployment, greengrass:DeleteDeployment, iot:DeleteJob). On a superseded revision that is
harmless but erases the ring's deployment history; on a still-active deployment
(delete_before_replace, a ring removed from the stack, `pulumi destroy`) it cancels the continuous
deployment: devices joining the ring afterwards get nothing, and if the following create fails the ring
has no deployment at all. So deployments are `retain_on_delete`: Pulumi never cancels a Greengrass
deployment; superseding is Greengrass's job, and the history stays for audit and rollback. To take a
model off a ring, deploy an empty deployment on purpose (docs/aws.md).

Component versions and model objects are `retain_on_delete` too: a rollback deploys the last good
component version, which must still exist with its S3 artifact (deleting a component version makes every
deployment that names it fail), so moving to a new model version must not delete the old ones.

Rollback: the gate (providers.RingGate) runs the rollout engine against AwsHub. On a failed gate it creates,
outside Pulumi's state, a deployment of the last good model component version to every touched ring, with
a signed rollback order merged into the model component's configuration (the only thing that makes the
agent accept a lower version), then fails `pulumi up` with the engine's report. Later rings never see the
bad version. The next forward deployment resets the rollback order away.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_aws_native as aws_native

from components.aws import providers
from components.aws.checks import aws_groups, check_aws_recipes
from components.aws.config import AwsConfig
from components.aws.plan import (
    SEARCHABLE_ATTRIBUTES,
    Naming,
    RingComponents,
    components_spec,
    deployment_policies,
    deployment_tags,
    group_clause,
    iot_job_configuration,
    model_key,
    partition,
    ring_job_policy,
    ring_query,
)
from components.aws.policies import (
    bucket_policy,
    core_device_iot_policy,
    device_role_policy,
    device_role_trust,
    ecr_lifecycle_policy,
    signing_key_policy,
    storage_key_policy,
)
from components.aws.recipes import agent_recipe, model_recipe, recipe_text
from components.platform import (
    GroupOutputs,
    KeyOutputs,
    Platform,
    PublishOutputs,
    RegistryOutputs,
    RingOutputs,
    RingSpec,
    StackBase,
    StoreOutputs,
    child,
    held_deadline,
    read_after,
)
from components.rollout.engine import rollout_id
from components.rollout.spec import DeviceGroupConfig, compares_with_control
from components.stack import raise_first
from edgefleet_agent.contract import greengrass as gg
from edgefleet_agent.contract.manifest import ModelManifest

FLEET_TYPE = "edgefleet:aws:Fleet"


MAX_INDEXED_SHADOWS = 10  # fleet indexing's filter takes at most 10 named shadows


def status_shadow_names(stack: Any) -> tuple[str, ...]:
    """The status shadows fleet indexing must index: one per model rolled out on AWS, sorted (stable inputs)."""
    on_aws = aws_groups(stack)
    models = {r.model for r in stack.rollouts if any(ring.group in on_aws for ring in r.rings)}
    return tuple(sorted(gg.status_shadow(m) for m in models))[:MAX_INDEXED_SHADOWS]


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)


class GreengrassFleet(pulumi.ComponentResource):
    """What every ring of the stack relies on: the thing type the rings select on, fleet indexing (dynamic
    thing groups need it), and the device side of credentials: the token-exchange role devices assume through
    the role alias, least privilege (the model prefix, the agent image, the agent's metric namespace)."""

    def __init__(self, name: str, platform: "AwsPlatform", base: StackBase, opts: pulumi.ResourceOptions | None = None) -> None:
        aws_cfg = platform.aws
        thing_type = platform.naming.thing_type(aws_cfg)
        super().__init__(
            FLEET_TYPE, name, {"region": aws_cfg.region, "thingType": thing_type, "metricNamespace": aws_cfg.metric_namespace}, opts
        )
        p = platform
        store, registry = base.store.outputs.handles, base.registry.outputs.handles
        # `properties` force replacement, and a fixed-name thing type cannot be created before the old one is
        # deleted (deprecate, then wait five minutes): they are constants, and changes to them are ignored.
        self.thing_type = aws.iot.ThingType(
            f"{name}-thing-type",
            name=thing_type,
            properties={
                "description": "edgefleet Greengrass core devices; rings select them by thing attributes",
                "searchable_attributes": list(SEARCHABLE_ATTRIBUTES),
            },
            opts=p.opts(self, ignore_changes=["properties"]),
        )
        self.indexing = None
        if aws_cfg.manage_fleet_indexing:
            # Dynamic thing groups are fleet-indexing queries: REGISTRY mode indexes thingTypeName, attributes and
            # thingGroupNames, everything the ring queries use. Account- and region-wide: one stack should own it.
            # The agents' status shadows (`edgefleet-<model>`, contract/greengrass.py) are indexed too, their version and
            # deferred as custom fields, so `edgefleet status` counts a ring's devices per version, and its held devices
            # per reason, in one aggregation each.
            shadows = status_shadow_names(p.stack)
            self.indexing = aws.iot.IndexingConfiguration(
                f"{name}-fleet-indexing",
                thing_indexing_configuration={
                    "thing_indexing_mode": "REGISTRY",
                    "thing_connectivity_indexing_mode": "STATUS",
                    **(
                        {
                            "named_shadow_indexing_mode": "ON",
                            "filter": {"named_shadow_names": list(shadows)},
                            "custom_fields": [
                                {"name": f"shadow.name.{s}.reported.{f}", "type": "String"}
                                for s in shadows
                                for f in gg.STATUS_SHADOW_INDEXED
                            ],
                        }
                        if shadows
                        else {}
                    ),
                },
                opts=p.opts(self),
            )
        self.role = aws.iam.Role(
            f"{name}-device-role",
            name=p.naming.device_role,
            assume_role_policy=_json(device_role_trust()),
            description="Greengrass token exchange role: read models, pull the agent image, publish agent health",
            max_session_duration=3600,
            opts=p.opts(self),
        )
        self.role_policy = aws.iam.RolePolicy(
            f"{name}-device-role-policy",
            role=self.role.id,
            policy=pulumi.Output.all(store.bucket.arn, store.key.arn, registry.repository.arn).apply(
                lambda a: _json(device_role_policy(a[0], a[1], aws_cfg.region, a[2], aws_cfg.metric_namespace))
            ),
            opts=p.opts(self),
        )
        self.role_alias = aws.iot.RoleAlias(
            f"{name}-role-alias",
            alias=p.naming.role_alias,
            role_arn=self.role.arn,
            credential_duration=3600,
            opts=p.opts(self, depends_on=[self.role_policy]),
        )
        self.core_policy = aws.iot.Policy(
            f"{name}-core-device-policy",
            name=p.naming.core_policy,
            policy=pulumi.Output.all(p.account, self.role_alias.arn).apply(
                lambda a: _json(core_device_iot_policy(p.partition, aws_cfg.region, a[0], a[1]))
            ),
            opts=p.opts(self),
        )
        # The device's one agent (every model of the device on one endpoint): one component per stack, which the
        # model components depend on; deployments never name it, so no model deployment restarts it.
        image = registry.repository.repository_url.apply(lambda url: f"{url}:{aws_cfg.agent_version}")
        self.agent = aws_native.greengrassv2.ComponentVersion(
            f"{name}-agent-component",
            inline_recipe=pulumi.Output.all(image, base.key.outputs.handles.public_key_pem).apply(
                lambda a: recipe_text(agent_recipe(p.naming.agent_component, aws_cfg.agent_version, a[0], aws_cfg.metric_namespace, a[1]))
            ),
            tags={"edgefleet:agent-version": aws_cfg.agent_version},
            opts=p.opts(self, native=True, retain_on_delete=True),
        )
        self.register_outputs(
            {
                "thingType": self.thing_type.arn,
                "deviceRole": self.role.arn,
                "roleAlias": self.role_alias.alias,
                "coreDevicePolicy": self.core_policy.name,
                "agentComponent": self.agent.arn,
            }
        )


@dataclass(frozen=True)
class Store:
    bucket: aws.s3.Bucket
    key: aws.kms.Key
    ready: list[pulumi.Resource]  # what an object upload must wait for (policies, encryption, versioning)


@dataclass(frozen=True)
class Key:
    key: aws.kms.Key
    public_key_pem: pulumi.Output[str]


@dataclass(frozen=True)
class Registry:
    repository: aws.ecr.Repository


@dataclass(frozen=True)
class Components:
    model: Any  # aws_native.greengrassv2.ComponentVersion of the model
    agent: Any  # … and the stack's one agent component, which the model component depends on


@dataclass(frozen=True)
class RingParts:
    thing_group: Any  # aws_native.iot.ThingGroup
    gate: providers.RingGate


class AwsPlatform(Platform):
    name = "aws"

    def __init__(self, stack, project_dir: Path) -> None:
        super().__init__(stack, project_dir)
        self.source = f"stacks/Pulumi.{pulumi.get_stack()}.yaml"
        self.aws: AwsConfig = stack.aws  # parse_stack_config ran checks.check_stack already
        raise_first(check_aws_recipes(stack, self.project_dir, pulumi.get_stack()), self.source)
        self.naming = Naming(pulumi.get_stack())
        self.partition = partition(self.aws.region)
        self._providers: tuple[aws.Provider, aws_native.Provider] | None = None
        self._identity: tuple[pulumi.Output[str], pulumi.Output[str]] | None = None
        self._fleet: GreengrassFleet | None = None

    # -- plumbing -------------------------------------------------------------------------------------------
    def providers(self) -> tuple[aws.Provider, aws_native.Provider]:
        """Explicit providers pinned to `edgefleet:aws.region`, so the stack file's region is the only one."""
        if self._providers is None:
            tags = {"edgefleet:stack": pulumi.get_stack(), "edgefleet:project": pulumi.get_project()}
            self._providers = (
                aws.Provider("edgefleet-aws", region=self.aws.region, default_tags={"tags": tags}),
                aws_native.Provider("edgefleet-aws-native", region=self.aws.region),
            )
        return self._providers

    def opts(self, parent: pulumi.Resource, native: bool = False, **kwargs: Any) -> pulumi.ResourceOptions:
        aws_p, native_p = self.providers()
        return child(parent, provider=native_p if native else aws_p, **kwargs)

    def _invoke_opts(self, *after: pulumi.Resource) -> pulumi.InvokeOutputOptions:
        """`after`: resources the invoke reads. Under `pulumi preview` an invoke whose arguments are unknown drops the
        dependencies its arguments carried; naming them keeps the graph policies see whole."""
        return pulumi.InvokeOutputOptions(provider=self.providers()[0], depends_on=list(after))

    def identity(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        """(account id, deploying role ARN). The role defaults to the role `pulumi up` runs as."""
        if self._identity is None:
            caller = aws.get_caller_identity_output(opts=self._invoke_opts())
            if self.aws.deploying_role_arn:
                role = pulumi.Output.from_input(self.aws.deploying_role_arn)
            else:
                role = aws.iam.get_session_context_output(arn=caller.arn, opts=self._invoke_opts()).issuer_arn
            self._identity = (caller.account_id, role)
        return self._identity

    @property
    def account(self) -> pulumi.Output[str]:
        return self.identity()[0]

    # -- Platform -------------------------------------------------------------------------------------------
    def signing_key(self, parent) -> KeyOutputs:
        n = parent.resource_name
        account, deployer = self.identity()
        key = aws.kms.Key(
            f"{n}-kms-key",
            description=f"edgefleet {pulumi.get_stack()}: signs model manifests and rollback orders",
            key_usage="SIGN_VERIFY",
            customer_master_key_spec="ECC_NIST_P256",
            deletion_window_in_days=30,
            policy=pulumi.Output.all(account, deployer).apply(lambda a: _json(signing_key_policy(self.partition, a[0], a[1]))),
            opts=self.opts(parent),
        )
        aws.kms.Alias(f"{n}-kms-alias", name=f"alias/{self.naming.prefix}-signing", target_key_id=key.key_id, opts=self.opts(parent))
        public = aws.kms.get_public_key_output(key_id=key.arn, opts=self._invoke_opts(key))
        public_key_pem = read_after(public.public_key_pem, key)
        return KeyOutputs(key_ref=key.arn, public_key_pem=public_key_pem, exportable=False, handles=Key(key, public_key_pem))

    def model_store(self, parent) -> StoreOutputs:
        n = parent.resource_name
        account, deployer = self.identity()
        key = aws.kms.Key(
            f"{n}-kms-key",
            description=f"edgefleet {pulumi.get_stack()}: encrypts the model store",
            key_usage="ENCRYPT_DECRYPT",
            customer_master_key_spec="SYMMETRIC_DEFAULT",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.all(account, deployer).apply(
                lambda a: _json(storage_key_policy(self.partition, a[0], self.aws.region, a[1]))
            ),
            opts=self.opts(parent),
        )
        aws.kms.Alias(f"{n}-kms-alias", name=f"alias/{self.naming.prefix}-models", target_key_id=key.key_id, opts=self.opts(parent))
        bucket = aws.s3.Bucket(f"{n}-bucket", force_destroy=False, opts=self.opts(parent))
        public = aws.s3.BucketPublicAccessBlock(
            f"{n}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=self.opts(parent),
        )
        ownership = aws.s3.BucketOwnershipControls(
            f"{n}-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}, opts=self.opts(parent)
        )
        versioning = aws.s3.BucketVersioning(
            f"{n}-versioning", bucket=bucket.id, versioning_configuration={"status": "Enabled"}, opts=self.opts(parent)
        )
        encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            f"{n}-encryption",
            bucket=bucket.id,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {"sse_algorithm": "aws:kms", "kms_master_key_id": key.arn},
                    "bucket_key_enabled": True,
                }
            ],
            opts=self.opts(parent),
        )
        policy = aws.s3.BucketPolicy(
            f"{n}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(lambda arn: _json(bucket_policy(arn))),
            opts=self.opts(parent, depends_on=[public]),
        )
        lifecycle = aws.s3.BucketLifecycleConfiguration(
            f"{n}-lifecycle",
            bucket=bucket.id,
            rules=[
                # rollout records are rewritten on every gate poll: keep a week of their history, not every poll's
                {
                    "id": "rollout-record-history",
                    "status": "Enabled",
                    "filter": {"prefix": "rollouts/"},
                    "noncurrent_version_expiration": {"noncurrent_days": 7},
                },
                {
                    "id": "abort-incomplete-uploads",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                },
            ],
            opts=self.opts(parent, depends_on=[versioning]),
        )
        return StoreOutputs(
            uri=bucket.bucket.apply(lambda b: f"s3://{b}/models/"),
            encrypted=True,
            public_access_blocked=True,
            handles=Store(bucket, key, [public, ownership, versioning, encryption, policy, lifecycle]),
        )

    def app_registry(self, parent) -> RegistryOutputs:
        n = parent.resource_name
        repo = aws.ecr.Repository(
            f"{n}-ecr",
            name=self.naming.repository,
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[{"encryption_type": "AES256"}],
            force_delete=False,
            opts=self.opts(parent),
        )
        aws.ecr.LifecyclePolicy(f"{n}-ecr-lifecycle", repository=repo.name, policy=_json(ecr_lifecycle_policy()), opts=self.opts(parent))
        return RegistryOutputs(repository_url=repo.repository_url, handles=Registry(repo))

    def fleet(self, base: StackBase) -> GreengrassFleet:
        """The stack's one Greengrass fleet (thing type, indexing, device role), declared with the first group or ring."""
        if self._fleet is None:
            self._fleet = GreengrassFleet("aws-greengrass", self, base)
        return self._fleet

    def device_group(self, parent, group: DeviceGroupConfig, base: StackBase) -> GroupOutputs:
        n = parent.resource_name
        fleet = self.fleet(base)
        name = self.naming.group_thing_group(group.name)
        after = [fleet.thing_type] + ([fleet.indexing] if fleet.indexing is not None else [])
        props = {"thing_group_description": f"edgefleet device group {group.name} ({group.hardware.name})"}
        if group.labels:
            query = group_clause(group, self.naming.thing_type(self.aws), name)
            tg = aws_native.iot.ThingGroup(
                f"{n}-thing-group",
                thing_group_name=name,
                query_string=query,
                thing_group_properties=props,
                opts=self.opts(parent, native=True, depends_on=after),
            )
        else:
            tg = aws_native.iot.ThingGroup(
                f"{n}-thing-group",
                thing_group_name=name,
                thing_group_properties=props,
                opts=self.opts(parent, native=True, depends_on=after),
            )
            for device in group.devices:
                # AddThingToThingGroup needs the thing: ids name things registered before `pulumi up` (docs/aws.md, Devices)
                aws.iot.ThingGroupMembership(
                    f"{n}-member-{device}", thing_name=device, thing_group_name=name, opts=self.opts(parent, depends_on=[tg])
                )
        return GroupOutputs(target=tg.arn)

    def publish_model(self, parent, manifest: ModelManifest, manifest_text: str, artifact: Path, base: StackBase) -> PublishOutputs:
        n = parent.resource_name
        st: Store = base.store.outputs.handles
        signing: Key = base.key.outputs.handles
        store, key = base.store, base.key
        bucket = st.bucket
        # Content-addressed and retained: a new version never overwrites an old one, and moving on never deletes
        # what a rollback may need to download again.
        keep = {"retain_on_delete": True, "depends_on": [*st.ready, store, key]}
        source = artifact.relative_to(self.project_dir) if artifact.is_relative_to(self.project_dir) else artifact
        objects = {"sha256": manifest.sha256, "model": manifest.name, "version": manifest.version}
        # uploaded by a dynamic provider that checks the file against the manifest's digest first and streams it
        art = providers.ModelArtifact(
            f"{n}-artifact",
            {
                "region": self.aws.region,
                "bucket": bucket.bucket,
                "key": model_key(manifest.name, manifest.sha256),
                "source": str(source),
                "sha256": manifest.sha256,
                "size": manifest.size,
                "kms_key": st.key.arn,
                "model": manifest.name,
                "version": manifest.version,
            },
            child(parent, **keep),
        )
        man = aws.s3.BucketObjectv2(
            f"{n}-manifest",
            bucket=bucket.id,
            key=model_key(manifest.name, manifest.sha256, ".yaml"),
            content=manifest_text,
            content_type="application/yaml",
            server_side_encryption="aws:kms",
            kms_key_id=st.key.arn,
            bucket_key_enabled=True,
            metadata=objects,
            opts=self.opts(parent, **keep),
        )
        sig = providers.ManifestSignature(
            f"{n}-manifest-signature",
            {
                "region": self.aws.region,
                "signing_key": signing.key.arn,
                "model": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "manifest": manifest_text,
            },
            child(parent, depends_on=[key]),
        )
        sig_obj = aws.s3.BucketObjectv2(
            f"{n}-signature",
            bucket=bucket.id,
            key=model_key(manifest.name, manifest.sha256, ".yaml.sig"),
            content=sig.signature,
            content_type="application/json",
            server_side_encryption="aws:kms",
            kms_key_id=st.key.arn,
            bucket_key_enabled=True,
            metadata=objects,
            opts=self.opts(parent, **keep),
        )
        # each variant beside it, content-addressed by its own digest: the recipe's manifests pick one per hardware
        variants = [
            providers.ModelArtifact(
                f"{n}-artifact-{v.kind}",
                {
                    "region": self.aws.region,
                    "bucket": bucket.bucket,
                    "key": model_key(manifest.name, v.sha256),
                    "source": str(source.parent / v.file),
                    "sha256": v.sha256,
                    "size": v.size,
                    "kms_key": st.key.arn,
                    "model": manifest.name,
                    "version": manifest.version,
                },
                child(parent, **keep),
            )
            for v in manifest.variants
        ]
        kinds = [v.kind for v in manifest.variants]
        on_aws = aws_groups(self.stack)
        hardware = [g.hardware for g in self.stack.groups if g.name in on_aws]
        uri = art.uri
        model_component = self.naming.model_component(manifest.name)
        agent_cv = self.fleet(base).agent
        model_cv = aws_native.greengrassv2.ComponentVersion(
            f"{n}-model-component",
            inline_recipe=pulumi.Output.all(uri, sig.signature, *(v.uri for v in variants)).apply(
                lambda a: recipe_text(
                    model_recipe(
                        model_component,
                        manifest,
                        manifest_text,
                        a[1],
                        a[0],
                        self.naming.agent_component,
                        self.aws.agent_version,
                        dict(zip(kinds, a[2:], strict=True)),
                        hardware,
                    )
                )
            ),
            tags={"edgefleet:model": manifest.name, "edgefleet:version": manifest.version, "edgefleet:sha256": manifest.sha256},
            # Greengrass reads the artifact to compute its digest when the version is created: the object must exist
            opts=self.opts(parent, native=True, retain_on_delete=True, depends_on=[art, *variants, man, sig_obj, agent_cv]),
        )
        return PublishOutputs(
            uri=uri,
            signature=sig.signature,
            handles=Components(model_cv, agent_cv),
            extra={
                "modelComponent": model_cv.arn,
                "agentComponent": agent_cv.arn,
                "manifestUri": bucket.bucket.apply(lambda b: f"s3://{b}/{model_key(manifest.name, manifest.sha256, '.yaml')}"),
                "signatureUri": bucket.bucket.apply(lambda b: f"s3://{b}/{model_key(manifest.name, manifest.sha256, '.yaml.sig')}"),
            },
        )

    def ring(self, parent, spec: RingSpec, model, group, base: StackBase) -> RingOutputs:
        n = parent.resource_name
        rollout, ring, index = spec.rollout, spec.ring, spec.index
        manifest = model.manifest
        published = model.published[self.name]
        model_cv, agent_cv = published.handles.model, published.handles.agent
        earlier: list[RingParts] = [r.handles for r in spec.previous]
        groups = {g.name: g for g in self.stack.groups}
        policy = ring_job_policy(self.aws, ring)
        rid = rollout_id(rollout.name, _desired_stub(manifest))
        # each ring's group's maintenance windows up to this one: the agent defers forward deployments outside them
        windows = [groups[r.group].windows_document() for r in rollout.rings[: index + 1]]

        # 1. the ring's devices: a dynamic thing group that excludes earlier rings (never later ones)
        query = ring_query(rollout, index, groups, self.naming.thing_type(self.aws), self.naming)
        fleet = self.fleet(base)
        tg = aws_native.iot.ThingGroup(
            f"{n}-thing-group",
            thing_group_name=self.naming.ring_thing_group(rollout.name, ring.name),
            query_string=query,
            thing_group_properties={
                "thing_group_description": f"edgefleet ring {ring.name} of rollout {rollout.name} "
                f"(ring {index + 1}, {policy.devices} devices)"
            },
            opts=self.opts(parent, native=True, depends_on=[fleet.thing_type, group] + ([fleet.indexing] if fleet.indexing else [])),
        )

        # 2. the ring's deployment: inputs from this ring only; ordered after the previous ring's gate
        previous_gate = earlier[-1].gate if earlier else None
        components = pulumi.Output.all(
            model_cv.component_name, model_cv.component_version, agent_cv.component_name, agent_cv.component_version
        ).apply(lambda a: components_spec(RingComponents(a[0], a[2], a[3], rollout.name, ring.name, windows[-1]), a[1], rid))
        deployment = aws_native.greengrassv2.Deployment(
            f"{n}-deployment",
            target_arn=tg.arn,
            deployment_name=self.naming.deployment_name(rollout.name, ring.name, manifest.version),
            components=components,
            deployment_policies=deployment_policies(),
            iot_job_configuration=iot_job_configuration(policy),
            tags=deployment_tags(rollout.name, ring.name, manifest.version),
            opts=self.opts(
                parent,
                native=True,
                depends_on=[previous_gate] if previous_gate is not None else [],
                retain_on_delete=True,
                delete_before_replace=False,
            ),
        )

        # 3. what operators watch: the same thresholds the gate judges, as alarms on the agents' metrics
        self._alarms(parent, rollout.name, ring, manifest.version)

        # 4. the gate: waits, judges, and on failure rolls every touched ring back
        rings = rollout.rings[: index + 1]
        targets = [r.thing_group.arn for r in earlier] + [tg.arn]
        gate = providers.RingGate(
            f"{n}-gate",
            {
                "region": self.aws.region,
                "stack": pulumi.get_stack(),
                "bucket": base.store.outputs.handles.bucket.bucket,
                "signing_key": base.key.outputs.handles.key.arn,
                "metric_namespace": self.aws.metric_namespace,
                "rollout": rollout.name,
                "ring": ring.name,
                "index": index,
                "total_rings": len(rollout.rings),
                "rings": [r.model_dump(mode="json") for r in rings],
                "targets": targets,
                "policies": [ring_job_policy(self.aws, r).to_json() for r in rings],
                "deployment": deployment.deployment_id,
                "model": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "size": manifest.size,
                "manifest": model.manifest_text,
                "uri": published.uri,
                "signature": published.signature,
                "model_component": model_cv.component_name,
                "agent_component": agent_cv.component_name,
                "agent_version": agent_cv.component_version,
                "gate_config": ring.gate.model_dump(mode="json"),
                "poll_seconds": self.aws.poll_seconds,
                # written only for a ring that compares with the devices still on the previous version
                **({"control_rings": [r.name for r in rollout.rings[index + 1 :]]} if compares_with_control(ring.gate) else {}),
                # written only when a ring's group has maintenance windows: a stack without any keeps its gate's inputs
                **({"windows": windows} if any(windows) else {}),
            },
            child(parent, depends_on=[deployment], custom_timeouts=pulumi.CustomTimeouts(create=_gate_timeout(rings, groups))),
        )
        devices = pulumi.Output.all(tg.arn).apply(lambda a: {"thingGroup": a[0], "query": query, "expectedDevices": policy.devices})
        return RingOutputs(deployment=deployment.deployment_id, gate=gate.gate, devices=devices, handles=RingParts(tg, gate))

    def _alarms(self, parent, rollout: str, ring, version: str) -> list[aws.cloudwatch.MetricAlarm]:
        n = parent.resource_name
        gate = ring.gate
        ns = self.aws.metric_namespace
        dims = dict(zip(gg.DIMENSIONS, (rollout, ring.name, version), strict=True))
        counts = {field: name for name, field in gg.COUNT_METRICS}

        def metric(id_: str, name: str, stat: str = "Sum") -> dict[str, Any]:
            return {
                "id": id_,
                "return_data": False,
                "metric": {"namespace": ns, "metric_name": name, "period": 60, "stat": stat, "dimensions": dims},
            }

        common = {
            "comparison_operator": "GreaterThanThreshold",
            "evaluation_periods": 5,
            "datapoints_to_alarm": 3,
            "treat_missing_data": "notBreaching",
        }
        out = []
        ratios = [
            ("error-rate", counts["errors"], gate.max_error_rate),
            ("invalid-outputs", counts["invalid_outputs"], gate.max_invalid_output_share),
        ]
        for what, metric_name, threshold in ratios:
            if threshold is None:
                continue
            out.append(
                aws.cloudwatch.MetricAlarm(
                    f"{n}-{what}-alarm",
                    name=self.naming.alarm(rollout, ring.name, what),
                    threshold=threshold,
                    alarm_description=f"{metric_name} per inference above the gate's {threshold} on ring {ring.name} ({rollout} {version})",
                    metric_queries=[
                        metric("bad", metric_name),
                        metric("inferences", counts["inferences"]),
                        {"id": "share", "expression": "bad / inferences", "label": f"{metric_name} share", "return_data": True},
                    ],
                    opts=self.opts(parent),
                    **common,
                )
            )
        if gate.max_p99_latency_ms is not None:
            out.append(
                aws.cloudwatch.MetricAlarm(
                    f"{n}-p99-latency-alarm",
                    name=self.naming.alarm(rollout, ring.name, "p99-latency"),
                    threshold=gate.max_p99_latency_ms,
                    alarm_description=f"p99 inference latency above {gate.max_p99_latency_ms} ms on ring {ring.name} ({rollout} {version})",
                    namespace=ns,
                    metric_name=gg.LATENCY_METRIC,
                    extended_statistic="p99",
                    period=60,
                    dimensions=dims,
                    opts=self.opts(parent),
                    **common,
                )
            )
        return out


def _desired_stub(manifest: ModelManifest):
    from edgefleet_agent.contract.state import DesiredModel

    return DesiredModel(
        model=manifest.name, version=manifest.version, sha256=manifest.sha256, size=manifest.size, uri="", manifest="", signature=""
    )


def _gate_timeout(rings, groups: dict[str, DeviceGroupConfig]) -> str:
    """Long enough for every ring up to this one to be judged, each waiting for its group's windows, plus a rollback's
    wait (rollbacks ignore windows)."""
    judged = [held_deadline(r, groups[r.group]) for r in rings]
    return f"{int((sum(judged) + max(r.gate.deadline_seconds for r in rings)) * 1.2) + 600}s"
