#!/usr/bin/python3
"""A real RTSP server (GStreamer's gst-rtsp-server) on 127.0.0.1 for iscamd's tests.

Serves /cam: the JPEG files of FRAMES (named 00000.jpg, 00001.jpg, … — the test lays out
which image each frame shows), looped, in real time at --fps, scaled to --size and
encoded as H.264 (x264) or, with --encoding jpeg, as RTP/JPEG. With --user and
--password, clients must authenticate (Basic). Prints READY once it listens, and serves
until it is killed.

    rtsp_server.py PORT FRAMES [--fps 5] [--size 640x480] [--encoding h264|jpeg]
                   [--user U --password P]

Debian's python3-gi and gir1.2-gst-rtsp-server-1.0 (scripts/setup.sh installs them).
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("frames")
    p.add_argument("--fps", type=int, default=5)
    p.add_argument("--size", default="640x480")
    p.add_argument("--encoding", choices=["h264", "jpeg"], default="h264")
    p.add_argument("--user")
    p.add_argument("--password")
    a = p.parse_args()
    width, height = a.size.split("x")
    Gst.init(None)

    encode = {
        "h264": f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={a.fps} "
        "! rtph264pay name=pay0 pt=96 config-interval=1",
        "jpeg": "jpegenc quality=90 ! rtpjpegpay name=pay0 pt=26",
    }[a.encoding]
    launch = (
        f"( multifilesrc location={a.frames}/%05d.jpg loop=true "
        f"caps=image/jpeg,framerate={a.fps}/1 ! jpegdec ! videoconvert ! videoscale "
        f"! video/x-raw,width={width},height={height},format=I420,pixel-aspect-ratio=1/1 ! {encode} )"
    )
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    if a.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(a.user, a.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{a.port}")
    print("READY", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
