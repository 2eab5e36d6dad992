"""PXE config files: naming, validation, substitution, atomic replacement, clearing."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mozpool.bmm import pxe


class PXEFiles(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()

    def test_names(self) -> None:
        self.assertEqual(pxe.pxe_filename("0011223344AB"), "01-00-11-22-33-44-ab")
        self.assertEqual(pxe.pxe_filename("00:11:22:33:44:ab"), "01-00-11-22-33-44-ab")
        self.assertEqual(pxe.pxe_filename("00-11-22-33-44-ab"), "01-00-11-22-33-44-ab")
        for bad in ("", "0011223344", "00112233445g", "../../etc/x", "0011223344ab00"):
            self.assertRaises(pxe.BadMAC, pxe.pxe_filename, bad)

    def test_set_substitutes_and_replaces(self) -> None:
        path = pxe.set_pxe_config(self.root, "0011223344ab", "a %IPADDRESS% b %IPADDRESS%\n%OTHER%", "10.0.0.5")
        self.assertEqual(path, os.path.join(self.root, "pxelinux.cfg", "01-00-11-22-33-44-ab"))
        self.assertEqual(pxe.read_pxe_config(self.root, "0011223344ab"), "a 10.0.0.5 b 10.0.0.5\n%OTHER%")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)
        pxe.set_pxe_config(self.root, "0011223344ab", "second", "10.0.0.5")
        self.assertEqual(pxe.read_pxe_config(self.root, "0011223344ab"), "second")
        self.assertEqual(os.listdir(os.path.dirname(path)), ["01-00-11-22-33-44-ab"], "no temporary files left")

    def test_clear(self) -> None:
        pxe.set_pxe_config(self.root, "0011223344ab", "x", "1.2.3.4")
        pxe.clear_pxe_config(self.root, "0011223344ab")
        self.assertIsNone(pxe.read_pxe_config(self.root, "0011223344ab"))
        pxe.clear_pxe_config(self.root, "0011223344ab")  # missing is fine
        self.assertRaises(pxe.BadMAC, pxe.clear_pxe_config, self.root, "nonsense")
