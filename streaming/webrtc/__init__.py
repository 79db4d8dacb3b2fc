"""The WebRTC transport (aiortc): offers checked whole before anything is made for them, peers
bound to sessions, their tracks, codecs and signaling.

Routes in app/ speak HTTP (offer/answer, WHIP, WHEP); everything media-side lives here.
"""
