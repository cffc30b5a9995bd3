"""SMTP sink for the shopmesh test bed: a real SMTP server (aiosmtpd) that accepts every message
and stores it, exactly as received, as one `.eml` file in a folder.

Run by scripts/testbed with the aiosmtpd virtualenv's Python:
    python smtp_sink.py HOST PORT FOLDER

Each file is written to a temporary name first and renamed, so a reader never sees half a
message. The envelope (MAIL FROM / RCPT TO), which is not part of the message itself, is added
on top as `X-Envelope-From:` / `X-Envelope-To:` header lines, as a delivering MTA would add
`Return-Path:` / `Delivered-To:`.
"""

import itertools
import os
import signal
import sys
import time

from aiosmtpd.controller import Controller


class FileSink:
    def __init__(self, folder):
        self.folder = folder
        self.counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}-{next(self.counter):06d}.eml"
        header = f"X-Envelope-From: <{envelope.mail_from}>\r\n"
        for rcpt in envelope.rcpt_tos:
            header += f"X-Envelope-To: <{rcpt}>\r\n"
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        tmp = os.path.join(self.folder, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(header.encode("utf-8") + content)
        os.rename(tmp, os.path.join(self.folder, name))
        print(f"stored {name} from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}", flush=True)
        return "250 OK stored"


def main():
    host, port, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(folder, exist_ok=True)
    controller = Controller(FileSink(folder), hostname=host, port=port, enable_SMTPUTF8=True)
    controller.start()
    print(f"listening on {host}:{port}, storing mail in {folder}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    controller.stop()
    print("stopped", flush=True)


if __name__ == "__main__":
    # sigwait needs the signals blocked in every thread, so block them before the server thread starts.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()
