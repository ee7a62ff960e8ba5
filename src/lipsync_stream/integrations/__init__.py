"""Plug-ins for voice-agent frameworks: pipecat (:mod:`.pipecat`, the ``[pipecat]`` extra) and
LiveKit Agents (:mod:`.livekit`, the ``[livekit]`` extra), on one framework-free core
(:mod:`.avatar`)."""
