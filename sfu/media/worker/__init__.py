"""The media worker process: the data plane of some participants, under a control process.

`wire` is the control channel (typed JSON frames on a Unix stream socket), `relay` the
datagrams between workers (one publisher's RTP relayed once to each other worker with
subscribers of it), `host` the worker's objects (peer transports, receivers, down tracks) and
the commands that drive them, `__main__` the process (`python -m sfu.media.worker`).
"""
