/* The AP trampoline: real mode to 32-bit protected mode, then into the image
 * at tern_ap_entry32 (entry.s). boot/smp.rs copies these bytes to a page
 * below 1 MiB and sends that page's number as the SIPI vector, so the AP
 * starts here with CS = page << 8, IP = 0. Position independent apart from
 * absolute addresses of the image, which does not move. */

.pushsection .rodata.trampoline, "a"
.code16
.global tern_ap_trampoline, tern_ap_trampoline_end
tern_ap_trampoline:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl tramp_gdt_ptr - tern_ap_trampoline
    mov %cr0, %eax
    or $1, %eax                 /* PE */
    mov %eax, %cr0
    ljmpl ${KERNEL_CS32}, $tern_ap_entry32
.balign 8
tramp_gdt_ptr:
    .word tern_gdt_end - tern_gdt - 1
    .long tern_gdt
tern_ap_trampoline_end:
.popsection
