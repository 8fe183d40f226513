"""``modelfleet agent``: runs on each serving VM beside TF Serving and makes it serve what the manifest says.

Never imports TensorFlow or Pulumi: stdlib, the store backends (boto3 / google-cloud-storage) and the project's
non-TF modules only. Modules, one job each:

* :mod:`~modelfleet.agent.sync`: follow each model's manifest (one conditional GET per poll) and move each
  model's *target* to the role's desired version once it is complete and verified locally; refuse bad versions.
* :mod:`~modelfleet.agent.cache`: the local model root: verified download into ``.tmp-…``, atomic rename to
  ``<root>/<model>/<N>``, keep the last K versions used.
* :mod:`~modelfleet.agent.plan`: desired version per role and the next config step (pure functions).
* :mod:`~modelfleet.agent.tfs_config`: ModelServerConfig text rendering.
* :mod:`~modelfleet.agent.durable`: durable local writes (temp file + fsync + rename, fsync of directories).
* :mod:`~modelfleet.agent.tfs`: TF Serving's REST model status.
* :mod:`~modelfleet.agent.status` / :mod:`~modelfleet.agent.health`: health and Prometheus metrics over HTTP.
* :mod:`~modelfleet.agent.main`: the loop (ticks, backoff, state across restarts).

Transition rules (docs/agent.md has the reasoning). TF Serving checks labels before it loads anything and refuses a
whole config (or exits, for its first one) when a label names a version that is not AVAILABLE at that moment:

1. Role ``stable`` serves the ``stable`` label; role ``canary`` serves ``canary``, or ``stable`` when no canary is set.
2. The config lists the target, plus, while the target is not yet AVAILABLE, the version the labels point at. Labels
   only ever name a version TF Serving reported AVAILABLE; they move, and the old version is dropped, in the config
   written after TF Serving reports the target AVAILABLE. A model new to TF Serving gets labels once it is loaded.
3. No version above the target is ever newly loaded: moving up, {old, new} makes the new one answer unversioned
   requests once it is AVAILABLE; rolling back, the lower target is loaded beside the (already loaded) higher one,
   which keeps answering until the target is AVAILABLE and is dropped in the next config.
4. TF Serving not listening (stopped, or starting: it opens its ports only once its models are loaded): the file may
   be its first config, where a version that fails to load makes it exit, and so does any label (unless
   ``--allow_version_labels_for_unavailable_models``: the bootstrap sets it, the agent does not rely on it). So it
   names only a version TF Serving has loaded on this VM before (the last good one, else the target if proven),
   without labels; with neither, the model is left out (``model_config_list {}`` when no model has one: TF Serving
   starts with it). A version never loaded here is added by a reload once TF Serving runs, where a failure is
   recorded and the last good version keeps serving, degraded. ``--once`` at boot writes exactly that: an empty list
   on a new VM, the last good version after a reboot.
5. A target only moves to a version whose files are all on local disk, verified, under their final name.
"""

from __future__ import annotations

from modelfleet.agent.main import Agent, AgentOptions

__all__ = ["Agent", "AgentOptions"]
