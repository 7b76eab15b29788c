/*
 * kvm-rx's demo guest: 16-bit real mode at 0x1000, no BIOS. Prints a banner through the 16550
 * UART at 0x3f8, then echoes every byte it receives (interrupt-driven: IRQ 4 through the in-kernel
 * 8259, so it sleeps in `hlt` between keys). Ctrl-D (0x04) prints "bye" and resets the machine
 * through the i8042 (0xfe to port 0x64), which ends the VM cleanly.
 *
 * Assembled by scripts/build-demo-guest.sh into src/vmm/demo-guest.ts (bytes committed).
 */
        .code16
        .org 0
start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x7000, %sp
        movw    $(isr - start + 0x1000), 0x30   /* IVT[12] (IRQ 4 with vector base 8): offset */
        movw    $0, 0x32                        /* segment 0 */
        mov     $0x11, %al                      /* 8259: ICW1 */
        out     %al, $0x20
        mov     $0x08, %al                      /* ICW2: IRQ 0-7 -> vectors 8-15 */
        out     %al, $0x21
        mov     $0x04, %al                      /* ICW3 */
        out     %al, $0x21
        mov     $0x01, %al                      /* ICW4: 8086 mode */
        out     %al, $0x21
        mov     $0xef, %al                      /* OCW1: only IRQ 4 unmasked */
        out     %al, $0x21
        mov     $0x3fa, %dx                     /* FCR: enable and reset the FIFOs */
        mov     $0x07, %al
        out     %al, (%dx)
        mov     $(banner - start + 0x1000), %si
        call    puts
        mov     $0x3f9, %dx                     /* IER: received-data interrupt */
        mov     $0x01, %al
        out     %al, (%dx)
        mov     $0x3fc, %dx                     /* MCR: DTR, RTS, OUT2 */
        mov     $0x0b, %al
        out     %al, (%dx)
        sti
idle:   hlt
        jmp     idle

isr:    push    %ax
        push    %dx
next:   mov     $0x3fd, %dx                     /* LSR: data ready? */
        in      (%dx), %al
        test    $0x01, %al
        jz      done
        mov     $0x3f8, %dx                     /* RBR */
        in      (%dx), %al
        cmp     $0x04, %al                      /* Ctrl-D */
        je      quit
        cmp     $0x0d, %al                      /* CR -> CR LF */
        jne     echo
        call    putc
        mov     $0x0a, %al
echo:   call    putc
        jmp     next
done:   mov     $0x20, %al                      /* EOI */
        out     %al, $0x20
        pop     %dx
        pop     %ax
        iret

quit:   mov     $(bye - start + 0x1000), %si
        call    puts
        mov     $0xfe, %al                      /* i8042: pulse reset */
        out     %al, $0x64
        cli
        hlt

puts:   lodsb
        test    %al, %al
        jz      1f
        call    putc
        jmp     puts
1:      ret

putc:   push    %dx
        push    %ax
        mov     $0x3fd, %dx
1:      in      (%dx), %al                      /* LSR: THR empty? */
        test    $0x20, %al
        jz      1b
        pop     %ax
        mov     $0x3f8, %dx
        out     %al, (%dx)
        pop     %dx
        ret

banner: .ascii  "\r\nkvm-rx demo guest: a real-mode program under KVM, its UART run by an RxJS pipeline.\r\n"
        .asciz  "Type something; it is echoed back by the guest. Ctrl-D resets the guest, Ctrl-A x quits.\r\n\r\n"
bye:    .asciz  "\r\nbye\r\n"
