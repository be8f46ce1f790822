"""Picture-quality measures of upscaled video (numpy + OpenCV only: no codecs, no torch).

temporal.py: static-region flicker, sparkle, warping error, tOF and PSNR/SSIM on Y, fed frame by
frame; the commands that decode and upscale around it are vsr/flicker.py and vsr/preview.py.
"""
