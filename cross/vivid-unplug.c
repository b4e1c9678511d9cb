/* Presses the vivid driver's "Disconnect" button on a capture device: the driver then
 * behaves as an unplugged USB camera (its nodes vanish, open handles get ENODEV), which is
 * what cross/check-aarch64.sh needs to test the camera source's reopen on a real driver.
 *
 *   vivid-unplug /dev/video0
 */
#include <fcntl.h>
#include <linux/videodev2.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/dev/video0";
    int fd = open(path, O_RDWR);
    if (fd < 0) { perror(path); return 1; }
    struct v4l2_queryctrl q = { .id = V4L2_CTRL_FLAG_NEXT_CTRL };
    while (ioctl(fd, VIDIOC_QUERYCTRL, &q) == 0) {
        if (strcmp((const char *)q.name, "Disconnect") == 0) {
            struct v4l2_control c = { .id = q.id, .value = 1 };
            if (ioctl(fd, VIDIOC_S_CTRL, &c) != 0) { perror("VIDIOC_S_CTRL Disconnect"); return 1; }
            close(fd);
            return 0;
        }
        q.id |= V4L2_CTRL_FLAG_NEXT_CTRL;
    }
    fprintf(stderr, "%s has no Disconnect control (not vivid?)\n", path);
    return 1;
}
