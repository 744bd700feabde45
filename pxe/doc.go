// Package pxe serves the files a machine needs to network-boot: the iPXE
// binaries (lpmos.IPXEBinaries: undionly.kpxe, snponly.efi, ipxe.efi) over
// TFTP, and kernels, initramfs and OS images over HTTP. The region composes
// it with the dhcp and ipxe packages; DHCP tells a machine which file to
// fetch, pxe hands the bytes over.
//
// Both servers are read-only views of a directory the operator controls.
// They never talk to the store and know nothing of tasks, machines or
// scripts: which file a machine gets is decided elsewhere (dhcp asks the
// region), and per-machine iPXE scripts are rendered by the ipxe package and
// served by the region's own handlers. pxe must not write files, list
// directories, or serve anything outside its root: every name a client sends
// goes through CleanPath (no "..", no dotfiles, no NUL or control bytes, no
// backslashes; a leading "/" is stripped, as firmware often sends
// "/undionly.kpxe"), and symbolic links are followed only when they resolve
// inside the root (see Dir).
//
// # TFTP
//
// TFTPServer is a read-only TFTP server written for this package rather than
// wrapping github.com/pin/tftp, because pin/tftp v3.2.0 cannot negotiate
// RFC 7440 windowsize and its windowed "anticipate" mode stalls on files of
// 8192 blocks or more. It implements RFC 1350 read requests in octet and
// netascii mode and the options of RFC 2347 (option extension), RFC 2348
// (blksize, clamped to TFTPConfig.MaxBlockSize, 1468 by default so a data
// packet fits a 1500-byte Ethernet MTU), RFC 2349 (timeout, tsize) and
// RFC 7440 (windowsize, clamped to TFTPConfig.MaxWindowSize). Block numbers
// roll over from 65535 to 0, as tftp-hpa, curl and iPXE expect, so files of
// any size can be sent. Write requests are refused with "access violation".
// Transfers are bounded (TFTPConfig.MaxTransfers); a request beyond the bound
// waits for a slot in a bounded queue (TFTPConfig.MaxQueued, QueueWait), as
// a boot storm needs: a PXE ROM ends its network boot at an error packet.
// Only a request that finds the queue full, or waits too long, gets a
// "server busy" error packet. Each transfer answers from
// its own port (its transfer ID) and from the address the request was sent
// to, retransmits after the negotiated timeout and gives up after
// TFTPConfig.Retries silent timeouts.
//
// An EDK2 (UEFI) PXE client first asks for a file's tsize and then aborts
// with error 8; that probe is logged at debug level and is normal, and the
// request it sends at once from the same port is answered even if it
// arrives before the server has read the error.
//
// Debian installs /usr/lib/ipxe/ipxe.efi as a symbolic link to
// /boot/ipxe.efi, outside the directory, so with that directory as the root
// ipxe.efi is not served and NewTFTPServer logs a warning (undionly.kpxe
// and snponly.efi, the files DHCP normally hands out, are regular files).
// To serve it, copy it (cp -L) into a directory of your own and serve
// Overlay(Dir(thatDir), Dir(lpmos.DefaultIPXEDir)) as TFTPConfig.Files.
//
// # HTTP
//
// FileServer is an http.Handler over a directory of boot files: GET and HEAD
// only, byte ranges (single and multipart), ETag and Last-Modified with
// conditional requests, and large files sent with sendfile(2) by
// http.ServeContent. Directories and dotfiles are 404.
//
// # Logs
//
// Anyone on the boot network can send refused requests as fast as the link
// allows, so both servers log at most RefusalLogLimit of them a minute
// (20 by default) and report how many they left out with the next line
// they log, without a goroutine of their own.
package pxe
