"""``python -m ember.shepherd``: run a shepherd whose channels come from the
environment (EMBER_SH_CH: its input channel, EMBER_GS_CH: GS's public
channel, EMBER_GS_CTL: GS's private control channel, all base64 sdescs;
EMBER_OUTPUT_LABEL: none / puid / name).  Managed processes never get
EMBER_SH_CH or EMBER_GS_CTL in their environment.  For nodes started
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
        ctl_sdesc = _env.decode(os.environ[_env.GS_CTL])
    except (KeyError, ValueError) as exc:
        print(f"ember shepherd: {_env.SH_CH}, {_env.GS_CH} and {_env.GS_CTL} must hold channel "
              f"descriptors ({exc})", file=sys.stderr)
        return 2
    in_ch = Channel.attach(sh_sdesc)
    gs_ch = Channel.attach(gs_sdesc)
    ctl_ch = Channel.attach(ctl_sdesc)
    for name in (_env.SH_CH, _env.GS_CTL):   # never passed on to children
        os.environ.pop(name, None)
    try:
        run(in_ch, gs_ch, label=os.environ.get(_env.LABEL, "none"), ctl_channel=ctl_ch)
    finally:
        ctl_ch.detach()
        gs_ch.detach()
        in_ch.detach()
    return 0


if __name__ == "__main__":
    sys.exit(main())
