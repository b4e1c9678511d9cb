use std::process::ExitCode;

use anyhow::Result;

/// Lists the V4L2 cameras with the modes iscamd can stream from them.
#[cfg(all(feature = "camera", target_os = "linux"))]
pub fn run() -> Result<ExitCode> {
    let cameras = iscamd::source::camera::list_cameras()?;
    if cameras.is_empty() {
        println!("no cameras found");
        return Ok(ExitCode::SUCCESS);
    }
    for camera in cameras {
        println!("{}  {}", camera.device, camera.name);
        match camera.modes {
            Ok(modes) if modes.is_empty() => println!("    (no MJPEG or YUYV mode iscamd decodes)"),
            Ok(modes) => modes.iter().for_each(|m| println!("    {m}")),
            Err(e) => println!("    cannot read its modes: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(all(feature = "camera", target_os = "linux")))]
pub fn run() -> Result<ExitCode> {
    anyhow::bail!("this iscamd was built without camera support (Linux, feature `camera`)")
}
