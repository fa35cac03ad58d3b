"""Compatibility: the names this module used to hold, now in their own modules (``mvmr.cli.flags``,
``mvmr.hardware``, ``mvmr.training``, ``mvmr.tables``)."""
from mvmr.cli.flags import add_common_flags, int_at_least, run_main  # noqa: F401
from mvmr.hardware import (check_precision_fits_model, cpu_supports_bf16, default_device,  # noqa: F401
                           resolve_accelerator, resolve_precision)
from mvmr.tables import format_table  # noqa: F401
from mvmr.training import (RunDir, build_trainer, configure_runtime, print_config, resume_checkpoint,  # noqa: F401
                           tune, write_run_config)
