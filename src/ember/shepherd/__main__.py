"""``python -m ember.shepherd``: run a shepherd whose channels come from the
environment (EMBER_SH_CH: its input channel, EMBER_GS_CH: GS's channel, both
base64 sdescs; EMBER_OUTPUT_LABEL: none / puid / name).  For nodes started
by an external launcher (srun, ssh); on one node the launcher forks the
shepherd and calls :func:`ember.shepherd.run` directly."""
import os
import sys


def main():
    from .. import _env
    from ..channels_c import Channel
    from .server import run

    try:
        sh_sdesc = _env.decode(os.environ[_env.SH_CH])
        gs_sdesc = _env.decode(os.environ[_env.GS_CH])
    except (KeyError, ValueError) as exc:
        print(f"ember shepherd: {_env.SH_CH} and {_env.GS_CH} must hold channel descriptors ({exc})",
              file=sys.stderr)
        return 2
    in_ch = Channel.attach(sh_sdesc)
    gs_ch = Channel.attach(gs_sdesc)
    try:
        run(in_ch, gs_ch, label=os.environ.get(_env.LABEL, "none"))
    finally:
        gs_ch.detach()
        in_ch.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main())
