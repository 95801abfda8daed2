"""One command from data to shareable reports: ``glomlib run --profile quick-cpu``.

Executes the numbered notebooks with papermill (cwd = project root, kernel ``python3``) into ONE run folder
``runs/<UTC stamp>-<profile>/``::

    notebooks/            the executed notebooks (kept even when a cell fails)
    audit/                01_data_audit          (out)
    ssl/                  02_simclr_pretrain     (out)
    finetune/<init>/      03_finetune, once per init in the profile's ``inits``
                          (gets ssl_checkpoint=<run>/ssl/encoder.safetensors)
    comparison/           04_baseline_comparison (gets runs=<run>/finetune)
    errors/               05_error_analysis      (gets run=<run>/finetune/glom, or the first init)
    external/             06_external_validation, only when the profile names ``external: MANIFEST`` (a labelled
                          manifest of another hospital; gets model=<run>/finetune/<same init as 05>/bundle.safetensors,
                          03's final models; model.safetensors when 03 trains no final model)
    data/manifest.csv     only when the profile has a ``subset`` (a small slice of the data, e.g. smoke)
    pipeline.json         what this run is: profile, data, parameters given to every notebook
    state.json            status of every step (pending/running/completed/failed), used by --resume
    pipeline.log          what each invocation did and how long every step took
    provenance.json       config, software versions, data fingerprint, git commit
    summary.json          headline metrics per init, ``models: {init: path}`` and ``bundles: {init: path}``

Then renders every executed notebook to a code-free HTML page (:mod:`glomlib.publish.report`) under
``reports/<run>/index.html``.

A profile (``glomlib/profiles/<name>.yaml`` or any YAML file) holds::

    description: ...
    inits: [glom, imagenet, scratch]     # notebook 03 runs once per init
    subset: {slides: 6, per_slide_label: 4, seed: 0}   # optional: run on a small slice of the manifest
    common: {positive_label: GS, image_size: 64}       # given to every notebook that declares the name
    steps:
      02_simclr_pretrain: {epochs: 5}                   # given to that notebook; unknown names are an error
      03_finetune: {epochs: 3, per_init: {scratch: {lr: 0.001}}}   # per_init: extra parameters for one init
    external: other_hospital/manifest.csv              # optional: also run 06_external_validation on it

``data``, ``out``, ``init``, ``ssl_checkpoint``, ``runs``, ``run``, ``model`` and ``manifest`` are set by the
pipeline, never by a profile.
"""

from glomlib.publish.pipeline.cli import RunConfig, cli_run  # noqa: F401
from glomlib.publish.pipeline.execute import KERNEL, KERNEL_ARGS, RunState, execute_step  # noqa: F401
from glomlib.publish.pipeline.params import notebook_parameters, notebook_paths, step_parameters  # noqa: F401
from glomlib.publish.pipeline.profiles import errors_init, load_run_profile, select_steps  # noqa: F401
from glomlib.publish.pipeline.run import run_pipeline  # noqa: F401
from glomlib.publish.steps import PIPELINE_PARAMS, STEMS, PipelineError, Step, plan_steps  # noqa: F401
