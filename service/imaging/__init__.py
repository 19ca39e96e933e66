"""Uploads -> pixels: decoding within limits, reading a digit from a photo. training/ may
import it."""
