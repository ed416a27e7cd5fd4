"""Former home of small callback helpers, now split by concern; kept so old imports work.

`validation` (argument checks), `callbacks.clocks` (schedule clocks, writing values),
`callbacks.momentum` (momentum cycling), `callbacks.peak` (peaks set by an LR finder).
"""

from flax_lr_callbacks.callbacks.clocks import (UNITS, clock, horizon,  # noqa: F401
                                                shift_context, to_steps, write)
from flax_lr_callbacks.callbacks.momentum import (MomentumCycling,  # noqa: F401
                                                  configure_momentum, momentum_names)
from flax_lr_callbacks.callbacks.peak import PeakFromFinder, waiting_for_peak  # noqa: F401
from flax_lr_callbacks.validation import check_choice, check_number  # noqa: F401
