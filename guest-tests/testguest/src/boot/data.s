/* Static tables the ring-0 code needs before any Rust runs: GDT, IDT space,
 * CPU 0's TSS and stacks, the identity page tables, and the AP mailbox.
 * They are all identity mapped and user accessible: ring-3 Rust code fills
 * the AP's TSS descriptors and the page tables for RAM above 4 GiB. */

.pushsection .data.boot, "aw"
.balign 16
.global tern_gdt, tern_gdt_end, tern_gdt_tss
tern_gdt:
    .quad 0                     /* 0x00 null */
    .quad 0x00af9a000000ffff    /* 0x08 ring-0 code, 64-bit */
    .quad 0x00cf92000000ffff    /* 0x10 ring-0 data */
    .quad 0x00cff2000000ffff    /* 0x18 ring-3 data (selector 0x1b) */
    .quad 0x00affa000000ffff    /* 0x20 ring-3 code, 64-bit (selector 0x23) */
    .quad 0x00cf9a000000ffff    /* 0x28 ring-0 code, 32-bit: AP trampoline */
tern_gdt_tss:                   /* 0x30: one 16-byte TSS descriptor per CPU */
    .fill 2 * {MAX_CPUS}, 8, 0
tern_gdt_end:

.balign 8
gdt_ptr:
    .word tern_gdt_end - tern_gdt - 1
    .quad tern_gdt
idt_ptr:
    .word 16 * {IDT_VECTORS} - 1
    .quad tern_idt
empty_idt_ptr:
    .word 0
    .quad 0

.global tern_boot_tsc, tern_start_info_paddr
tern_boot_tsc:          .quad 0     /* TSC at the first instruction */
tern_start_info_paddr:  .quad 0     /* %ebx at entry */

/* Filled by the BSP for the AP it is starting (boot/smp.rs ApBoot). */
.balign 8
.global tern_ap_boot
tern_ap_boot:
    .quad 0                     /* 0: ring-0 stack top (RSP0) */
    .quad 0                     /* 8: ring-3 stack pointer */
    .quad 0                     /* 16: ring-3 entry point */
    .quad 0                     /* 24: its argument (CPU index) */
    .quad 0                     /* 32: TSS selector */

/* CPU 0's TSS; the APs' are built by boot/smp.rs. No I/O bitmap: IOPL 3
 * alone lets ring 3 use ports. */
.balign 16
.global tern_bsp_tss
tern_bsp_tss:
    .long 0
    .quad tern_bsp_rsp0_top     /* RSP0: unused, every gate switches to IST1 */
    .quad 0, 0, 0
    .quad tern_bsp_ist_top      /* IST1: exceptions */
    .quad 0, 0, 0, 0, 0, 0, 0
    .word 0
    .word 104                   /* I/O map base = limit: no bitmap */

/* Identity map of the first 4 GiB in 2 MiB pages, user accessible and
 * writable: RAM below the MMIO hole and the hole itself (its pages are
 * MMIO, for which KVM forces uncached access whatever the guest asks).
 * PDPT entries 4 and up map RAM above 4 GiB; boot/paging.rs adds them. */
.balign 4096
.global tern_boot_pml4, tern_boot_pdpt
tern_boot_pml4:
    .quad tern_boot_pdpt + {PT_TABLE}
    .fill 511, 8, 0
tern_boot_pdpt:
    .quad tern_boot_pd + {PT_TABLE}
    .quad tern_boot_pd + 0x1000 + {PT_TABLE}
    .quad tern_boot_pd + 0x2000 + {PT_TABLE}
    .quad tern_boot_pd + 0x3000 + {PT_TABLE}
    .fill 508, 8, 0
tern_boot_pd:
    .set pd_addr, 0
    .rept 2048
    .quad pd_addr + {PT_LARGE_PAGE}
    .set pd_addr, pd_addr + 0x200000
    .endr
.popsection

.pushsection .bss.boot, "aw", @nobits
.balign 16
.global tern_idt
tern_idt:
    .skip 16 * {IDT_VECTORS}
.balign 4096
.global tern_bsp_rsp0_top, tern_bsp_ist_top, tern_bsp_user_stack_top
    .skip {RSP0_SIZE}
tern_bsp_rsp0_top:
    .skip {IST_SIZE}
tern_bsp_ist_top:
    .skip {USER_STACK_SIZE}
tern_bsp_user_stack_top:
.popsection
